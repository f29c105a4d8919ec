package tests

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// socksgate runs with -log-format json in these tests (see startSocksgate): its log is read as
// records, one JSON object a line, and matched on fields, never on the text layout. Peers' logs
// (dante, tinyproxy, …) stay text.

// logLine is one record of socksgate's log: msg, level, time and the flow's fields.
type logLine map[string]any

// logFields is what a record must hold: each key with its value as text (a number as written,
// 40; a list as [a b]). A value starting with "~" matches any value containing the rest.
type logFields map[string]string

// logLines parses out into records. Lines that are not JSON objects (a panic, the race
// detector's report) are skipped.
func logLines(out string) []logLine {
	var lines []logLine
	for _, s := range strings.Split(out, "\n") {
		s = strings.TrimSpace(s)
		if !strings.HasPrefix(s, "{") {
			continue
		}
		d := json.NewDecoder(strings.NewReader(s))
		d.UseNumber()
		var l logLine
		if d.Decode(&l) == nil {
			lines = append(lines, l)
		}
	}
	return lines
}

// str is the value of key as text, "" when the record has none.
func (l logLine) str(key string) string {
	v, ok := l[key]
	if !ok || v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// has reports whether l holds every field of f.
func (l logLine) has(f logFields) bool {
	for k, want := range f {
		got, ok := l[k]
		if !ok {
			return false
		}
		s := l.str(k)
		if sub, found := strings.CutPrefix(want, "~"); found {
			if !strings.Contains(s, sub) {
				return false
			}
		} else if s != want || got == nil {
			return false
		}
	}
	return true
}

// String shows the record as JSON, for failure messages.
func (l logLine) String() string {
	b, _ := json.Marshal(map[string]any(l))
	return string(b)
}

// findLogs returns the records of out that hold f, in order.
func findLogs(out string, f logFields) []logLine {
	var found []logLine
	for _, l := range logLines(out) {
		if l.has(f) {
			found = append(found, l)
		}
	}
	return found
}

// countLogs is how many records of out hold f.
func countLogs(out string, f logFields) int { return len(findLogs(out, f)) }

// lastLog is the last record of out that holds f, or nil.
func lastLog(out string, f logFields) logLine {
	found := findLogs(out, f)
	if len(found) == 0 {
		return nil
	}
	return found[len(found)-1]
}

// hasLog reports whether some record of out holds f.
func hasLog(out string, f logFields) bool { return lastLog(out, f) != nil }

// waitLog waits until p has logged a record holding f, and returns the last such record.
func waitLog(p *netlab.Proc, within time.Duration, f logFields) (logLine, bool) {
	var l logLine
	ok := waitFor(within, func() bool { l = lastLog(p.Output(), f); return l != nil })
	return l, ok
}

// flowEnded matches the one line of every ended TCP flow (flow, flow failed, flow blocked, flow
// refused): only those carry an outcome. udpEnded is the same for UDP sessions.
var (
	flowEnded = logFields{"network": "tcp", "outcome": "~"}
	udpEnded  = logFields{"network": "udp", "outcome": "~"}
)

// msg matches a record by its message.
func msg(m string) logFields { return logFields{"msg": m} }

// with returns f plus the key and value given.
func (f logFields) with(kv ...string) logFields {
	out := make(logFields, len(f)+len(kv)/2)
	for k, v := range f {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}
