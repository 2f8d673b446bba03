// bench/filter's peer: cel-go (the CEL of Kubernetes, Tekton and Argo) doing
// what hookwarden's receivers do per delivery for its filters: parse the
// payload once, bind the same variables, evaluate every filter. Prints one
// JSON line, in the form examples/filter_bench.rs prints.
//
//	filter-peer PAYLOAD_FILE ITERATIONS FILTER...
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"
)

func main() {
	payload, err := os.ReadFile(os.Args[1])
	check(err)
	iterations, err := strconv.Atoi(os.Args[2])
	check(err)
	env, err := cel.NewEnv(
		cel.Variable("event", cel.StringType),
		cel.Variable("action", cel.DynType),
		cel.Variable("delivery", cel.StringType),
		cel.Variable("hook", cel.StringType),
		cel.Variable("repository", cel.DynType),
		cel.Variable("body", cel.DynType),
		ext.Strings(),
	)
	check(err)
	var programs []cel.Program
	for _, source := range os.Args[3:] {
		ast, issues := env.Compile(source)
		if issues != nil && issues.Err() != nil {
			check(issues.Err())
		}
		program, err := env.Program(ast)
		check(err)
		programs = append(programs, program)
	}
	judge := func(body map[string]any) int {
		passed := 0
		vars := map[string]any{
			"event": "pull_request", "action": body["action"], "delivery": "guid", "hook": "team/hook",
			"repository": body["repository"].(map[string]any)["full_name"], "body": body,
		}
		for _, p := range programs {
			out, _, err := p.Eval(vars)
			if err == nil && out.Value() == true {
				passed++
			}
		}
		return passed
	}
	parse := func() map[string]any {
		var body map[string]any
		check(json.Unmarshal(payload, &body))
		return body
	}

	passed := 0
	started := time.Now()
	for i := 0; i < iterations; i++ {
		passed += judge(parse())
	}
	perDelivery := float64(time.Since(started).Microseconds()) / float64(iterations)

	body := parse()
	started = time.Now()
	for i := 0; i < iterations; i++ {
		passed += judge(body)
	}
	evalOnly := float64(time.Since(started).Microseconds()) / float64(iterations)
	fmt.Printf("{\"per_delivery_us\": %.2f, \"eval_us\": %.2f, \"passed\": %d}\n", perDelivery, evalOnly, passed)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
