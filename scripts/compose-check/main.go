// compose-check loads a Compose file the way `docker compose config` does (compose-go, the
// loader Docker Compose itself uses: the compose-spec JSON schema, interpolation from the
// environment and .env, extends/include, normalisation, the consistency checks, profiles) and
// prints the normalised model on stdout. It exits non-zero with the loader's error when the file
// is invalid. Built and cached by scripts/deploy-tools (no Docker needed).
//
//	compose-check [-f FILE]... [--profile NAME]... [-p NAME] [--project-directory DIR]
//	              [--env-file FILE]... [--format yaml|json] [-q]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var files, profiles, envFiles list
	flag.Var(&files, "f", "Compose file (repeatable; default: compose.yaml/docker-compose.yml in the working directory)")
	flag.Var(&files, "file", "same as -f")
	flag.Var(&profiles, "profile", "profile to enable (repeatable; default: $COMPOSE_PROFILES)")
	flag.Var(&envFiles, "env-file", "environment file (repeatable; default: .env in the project directory)")
	name := flag.String("p", "", "project name (default: from the file or the directory)")
	flag.StringVar(name, "project-name", "", "same as -p")
	dir := flag.String("project-directory", "", "project directory (default: the first file's directory)")
	format := flag.String("format", "yaml", "output format: yaml or json")
	quiet := flag.Bool("q", false, "only validate: print nothing on success")
	flag.BoolVar(quiet, "quiet", false, "same as -q")
	flag.Parse()
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments: %s", strings.Join(flag.Args(), " ")))
	}
	if *format != "yaml" && *format != "json" {
		fail(fmt.Errorf("unknown --format %q (yaml or json)", *format))
	}

	// The options docker compose (v2, cmd/compose) gives compose-go for `config`.
	opts, err := cli.NewProjectOptions(files,
		cli.WithWorkingDirectory(*dir),
		cli.WithOsEnv,
		cli.WithConfigFileEnv,
		cli.WithDefaultConfigPath,
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv,
		cli.WithDefaultProfiles(profiles...),
		cli.WithName(*name),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		fail(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	if *quiet {
		return
	}
	var out []byte
	if *format == "json" {
		out, err = project.MarshalJSON()
	} else {
		out, err = project.MarshalYAML()
	}
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		fmt.Println()
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "compose-check: %v\n", err)
	os.Exit(1)
}
