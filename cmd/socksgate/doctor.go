package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/socksgate/socksgate/gateway"
	"github.com/socksgate/socksgate/internal/doctor"
	"github.com/socksgate/socksgate/redirect"
)

// doctorSystem gathers the system's state; tests replace it.
var doctorSystem = doctor.System

func doctorMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "config file (YAML); the embedded default without it")
	offline := fs.Bool("offline", false, "do not try to connect to the upstreams")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "socksgate doctor: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "socksgate: %v\n", err)
		return 1
	}
	own, _ := redirect.InterfacePrefixes(cfg.LAN.Interfaces)
	spec := gateway.SpecFromConfig(cfg, own)
	findings := doctor.Run(context.Background(), cfg, spec, doctorSystem(cfg.Mark, *offline))
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(struct {
			Findings []doctor.Finding `json:"findings"`
			Blocking bool             `json:"blocking"`
		}{findings, doctor.Blocking(findings)})
	} else {
		printFindings(stdout, findings)
	}
	if doctor.Blocking(findings) {
		return 1
	}
	return 0
}

func printFindings(w io.Writer, fs []doctor.Finding) {
	problems := 0
	for _, f := range fs {
		fmt.Fprintf(w, "%-5s %-9s %s\n", f.Severity, f.Check, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", f.Fix)
		}
		if f.Severity >= doctor.Warn {
			problems++
		}
	}
	switch {
	case doctor.Blocking(fs):
		fmt.Fprintf(w, "%d problem(s); capture is blocked (BLOCK lines)\n", problems)
	case problems > 0:
		fmt.Fprintf(w, "%d warning(s); nothing blocks capture\n", problems)
	default:
		fmt.Fprintln(w, "no problems found")
	}
}
