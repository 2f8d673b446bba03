// The local node's sandbox ("pause") image program, built here: no image is pulled.
module hookwarden.local/e2e/tools/pause

go 1.24.0
