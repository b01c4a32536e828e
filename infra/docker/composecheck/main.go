// composecheck loads Docker Compose files the way Docker Compose does
// (compose-spec/compose-go: schema validation, interpolation from an
// environment file, normalization) and prints the resulting project as
// JSON, for infra/docker/check.py to check against adpipe's binaries.
// No container engine is needed.
//
//	go run . -all-profiles -env-file central.env.example compose.central.yml > project.json
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	envFile := flag.String("env-file", "", "variables for interpolation (the only ones used: the process environment is ignored)")
	name := flag.String("project-name", "", "the project's name (default: the file's `name:`)")
	allProfiles := flag.Bool("all-profiles", false, "include services of every profile")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-env-file FILE] COMPOSE_FILE...")
		os.Exit(2)
	}
	options := []cli.ProjectOptionsFn{}
	if *name != "" {
		options = append(options, cli.WithName(*name))
	}
	if *allProfiles {
		options = append(options, cli.WithProfiles([]string{"*"}))
	}
	if *envFile != "" {
		options = append(options, cli.WithEnvFiles(*envFile), cli.WithDotEnv)
	}
	projectOptions, err := cli.NewProjectOptions(flag.Args(), options...)
	if err != nil {
		fail(err)
	}
	project, err := cli.ProjectFromOptions(context.Background(), projectOptions)
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
	fmt.Println()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "compose:", err)
	os.Exit(1)
}
