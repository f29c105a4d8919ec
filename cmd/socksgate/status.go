package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/socksgate/socksgate/admin"
)

// statusMain is `socksgate status [-a HOST:PORT]`: the live flows and upstream health of a
// running socksgate, read from its admin endpoint, as tables.
func statusMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("a", "127.0.0.1:9091", "admin endpoint address (the config's admin: key)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	base := *addr
	if !strings.Contains(base, "://") {
		if _, _, err := net.SplitHostPort(base); err != nil {
			fmt.Fprintf(stderr, "socksgate status: -a %q: want HOST:PORT\n", *addr)
			return 2
		}
		base = "http://" + base
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := admin.Client{Base: strings.TrimRight(base, "/")}
	ups, err := c.Upstreams(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "socksgate status: %v (is admin: set in the config?)\n", err)
		return 1
	}
	flows, err := c.Flows(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "socksgate status: %v\n", err)
		return 1
	}
	printStatus(stdout, ups, flows)
	return 0
}

// printStatus writes the upstream and flow tables.
func printStatus(w io.Writer, ups []admin.Upstream, flows []admin.Flow) {
	fmt.Fprintf(w, "UPSTREAMS (%d)\n", len(ups))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tGROUP\tSTATE\tSINCE\tURL\tREASON")
	for _, u := range ups {
		state := "down"
		if u.Up {
			state = "up"
		}
		since := "-"
		if !u.Since.IsZero() {
			since = time.Since(u.Since).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", u.Name, dash(u.Group), state, since, dash(u.URL), dash(u.Reason))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nFLOWS (%d)\n", len(flows))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tSRC\tDST\tNAME\tINBOUND\tUPSTREAM\tRULE\tAGE\tUP\tDOWN")
	for _, f := range flows {
		age := (time.Duration(f.Age*1000) * time.Millisecond).Round(time.Second)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Network, f.Src, dash(f.Dst), dash(f.Name),
			f.Inbound, dash(f.Upstream), dash(f.Rule), age, humanBytes(f.BytesUp), humanBytes(f.BytesDown))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanBytes prints n with a binary unit: 512B, 1.5KiB, 3.2MiB.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
