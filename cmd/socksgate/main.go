// Command socksgate is a transparent gateway proxy: on a Linux router it captures the LAN's TCP
// (and UDP) flows with nftables and relays them through upstream proxies, and it serves
// explicit HTTP and SOCKS proxy ports with the same routing.
//
//	socksgate run     [-c FILE]   serve (the embedded default config without -c)
//	socksgate check    -c FILE    validate a config; non-zero exit with the error list
//	socksgate rules   [-c FILE]   print the nftables rules it would install, without root
//	socksgate explain  -c FILE SRC DST[:PORT]   which rule decides a flow, and why not the others
//	socksgate doctor  [-c FILE]   check the running system against the config
//	socksgate status  [-c FILE] [-a ADDR]   live flows and upstream health from the admin endpoint
//	socksgate reload  [-p PID]    make the running socksgate re-read its config (SIGHUP)
//	socksgate version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/gateway"
	"github.com/socksgate/socksgate/redirect"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `usage: socksgate <command> [flags]

commands:
  run     [-c FILE] [-log-format text|json]
                      run the gateway (with no -c: the embedded default config);
                      -log-format overrides the config's log.format
  check    -c FILE    validate a config file and print its warnings
  rules   [-c FILE]   print the nftables rules and policy routing it would install
  explain  -c FILE SRC DST[:PORT] [--name NAME] [--proto udp] [--inbound KIND] [--user NAME] [--json]
          -c FILE SRC --query NAME
                      which rule decides a flow or DNS query, its way out, and why
                      each earlier rule did not match (dials and resolves nothing)
  doctor  [-c FILE] [--offline] [--json]
                      check the kernel, sysctls, firewall and listeners against the
                      config; non-zero exit when something blocks capture
  status  [-c FILE] [-a ADDR]
                      show live flows and upstream health (needs admin: in the
                      config; -c reads its address and secret)
  reload  [-p PID]    make a running socksgate re-read its config (SIGHUP)
  version             print the version
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "config file (YAML)")
	var logFormat *configs.LogFormat
	setsMode := "error"
	if cmd == "check" {
		fs.Func("sets", "error (default) or warn: whether a rule set file that cannot be read fails the check", func(s string) error {
			if s != "error" && s != "warn" {
				return fmt.Errorf("want error or warn")
			}
			setsMode = s
			return nil
		})
	}
	if cmd == "run" {
		fs.Func("log-format", "log format, text or json: overrides the config's log.format", func(s string) error {
			logFormat = new(configs.LogFormat)
			return logFormat.UnmarshalText([]byte(s))
		})
	}
	switch cmd {
	case "run", "check", "rules":
	case "status":
		return statusMain(args, stdout, stderr)
	case "reload":
		return reloadMain(args, stdout, stderr)
	case "explain":
		return explainMain(args, stdout, stderr)
	case "doctor":
		return doctorMain(args, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "socksgate", versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "socksgate: unknown command %q\n%s", cmd, usage)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cmd == "check" && *path == "" {
		fmt.Fprintln(stderr, "socksgate check: -c FILE is required")
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "socksgate: %v\n", err)
		return 1
	}
	switch cmd {
	case "check":
		if _, err := openGeoIP(cfg); err != nil {
			fmt.Fprintf(stderr, "socksgate: %s: %v\n", *path, err)
			return 1
		}
		for _, w := range cfg.Warnings() {
			fmt.Fprintln(stdout, "warning:", w)
		}
		// A rule set file is not the config: socksgate runs without it (the set is empty
		// until the file can be read), so the service files check with -sets=warn.
		errOut := stderr
		if setsMode == "warn" {
			errOut = stdout
		}
		if n := checkSets(cfg, stdout, errOut, setsMode == "warn"); n > 0 && setsMode == "error" {
			fmt.Fprintf(stderr, "%s: %d rule set files cannot be used (socksgate run would start with them empty)\n", *path, n)
			return 1
		}
		fmt.Fprintf(stdout, "%s: ok\n", *path)
		return 0
	case "rules":
		own, err := redirect.InterfacePrefixes(cfg.LAN.Interfaces)
		if err != nil {
			fmt.Fprintf(stdout, "# the LAN interfaces' own prefixes are added at start (%v)\n", err)
		}
		spec := gateway.SpecFromConfig(cfg, own)
		spec.Direct = hoistedNow(cfg, stdout)
		fmt.Fprint(stdout, spec.Render())
		return 0
	}
	// The flag's log format holds for every config the process reads, reloads included.
	override := func(c *configs.Config) {
		if logFormat != nil {
			c.Log.Format = *logFormat
		}
	}
	override(cfg)
	return run(cfg, *path, override, stderr)
}

func loadConfig(path string) (*configs.Config, error) {
	if path == "" {
		return configs.Default(), nil
	}
	return configs.Load(path)
}

func run(cfg *configs.Config, path string, override func(*configs.Config), stderr io.Writer) int {
	log := newLogger(cfg, stderr)
	stdlog.SetFlags(0)
	stdlog.SetOutput(stdLog{log})
	gateway.BuildVersion = versionString()
	entry := log.WithField("version", gateway.BuildVersion)
	if path == "" {
		entry.Info("no -c given: running the embedded default config")
	} else {
		entry = entry.WithField("config", path)
	}
	for _, w := range cfg.Warnings() {
		log.Warn("config: " + w)
	}
	warnReadableSecrets(log, cfg, path)
	entry.Info("starting")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// SIGHUP is caught for the whole life of run, shutdown included: were its handler removed
	// before the gateway has taken its rules down, a HUP (a reload racing a stop) would kill
	// the process with Go's default action and leave the rules behind.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan *configs.Config)
	go watchReload(ctx, log, path, override, hup, reload)
	// PUT /configs of the control API: the file is checked here, so that the client hears why
	// it is refused, and then re-read as a SIGHUP has it.
	gateway.RequestReload = func() error {
		if path == "" {
			return errors.New("running the embedded default config: there is no file to re-read")
		}
		if _, err := configs.Load(path); err != nil {
			return err
		}
		select {
		case hup <- syscall.SIGHUP:
		default: // a reload is pending already
		}
		return nil
	}
	if err := gateway.Run(ctx, cfg, log, reload); err != nil {
		log.WithError(err).Error("socksgate stopped")
		return 1
	}
	log.Info("stopped")
	return 0
}

// watchReload re-reads the config file on each SIGHUP and hands a valid one to the gateway. An
// invalid one is refused with its whole error list, and the running config stays in force.
func watchReload(ctx context.Context, log *logrus.Logger, path string, override func(*configs.Config), hup <-chan os.Signal, reload chan<- *configs.Config) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if path == "" {
			log.Warn("SIGHUP: running the embedded default config, nothing to re-read")
			continue
		}
		cfg, err := configs.Load(path)
		if err != nil {
			log.WithField("config", path).Error("reload refused, the running config stays in force")
			for _, line := range strings.Split(err.Error(), "\n") {
				log.Error("config: " + line)
			}
			continue
		}
		override(cfg)
		for _, w := range cfg.Warnings() {
			log.Warn("config: " + w)
		}
		warnReadableSecrets(log, cfg, path)
		log.WithField("config", path).Info("reloading")
		select {
		case reload <- cfg:
		case <-ctx.Done():
			return
		}
	}
}

// stdLog carries the lines of the standard log package into logrus, as warnings. Libraries
// that have no logger of their own write there: net/http's Transport does (the forwarding HTTP
// proxy's upstream connections), e.g. "Unsolicited response received on idle HTTP channel".
type stdLog struct{ log *logrus.Logger }

func (s stdLog) Write(p []byte) (int, error) {
	s.log.WithField("from", "go log").Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newLogger(cfg *configs.Config, out io.Writer) *logrus.Logger {
	log := logrus.New()
	log.SetOutput(out)
	log.SetLevel(gateway.LogrusLevel(cfg.Log.Level))
	if cfg.Log.Format == configs.LogJSON {
		log.SetFormatter(&logrus.JSONFormatter{})
	} else {
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, DisableColors: true})
	}
	return log
}

// warnReadableSecrets warns when a config holding passwords can be read by other users.
func warnReadableSecrets(log *logrus.Logger, cfg *configs.Config, path string) {
	if path == "" || !hasSecrets(cfg) {
		return
	}
	st, err := os.Stat(path)
	if err != nil {
		return
	}
	if st.Mode().Perm()&0o004 != 0 {
		log.WithField("config", path).Warn("config file holds passwords and is readable by other users (chmod 600 it)")
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
	}
	return "dev"
}

func hasSecrets(cfg *configs.Config) bool {
	if len(cfg.Listen.Users) > 0 {
		return true
	}
	for _, u := range cfg.Upstreams {
		if u.URL != nil && u.URL.User != nil {
			if _, ok := u.URL.User.Password(); ok {
				return true
			}
		}
	}
	return false
}
