// Command libcni-client drives CNI plugins through libcni, the library that
// containerd, CRI-O and Podman use, so that podnet's tests can exercise a
// plugin exactly the way a real container runtime would: same stdin
// construction, same prevResult chaining, same result cache on disk.
//
// It is deliberately built from Debian's packaged libcni (v1.1.2) in GOPATH
// mode so that no Go module download is needed. See README.md.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// opTimeout bounds every single libcni operation, like a runtime would, so
// that a hung plugin fails the test instead of blocking it forever.
const opTimeout = 60 * time.Second

// Exit statuses: 1 for an operation that failed, 2 for a command-line error.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// errUsage marks errors that are the caller's fault (bad flags, bad files)
// rather than a plugin's.
var errUsage = errors.New("usage error")

const usageText = `usage: libcni-client -cni-path DIR[:DIR...] -conflist FILE -cache-dir DIR <command> [flags]

commands:
  add     -netns PATH -id CONTAINERID [-ifname eth0]
  check   -netns PATH -id CONTAINERID [-ifname eth0]
  del     -netns PATH -id CONTAINERID [-ifname eth0]
  version
  bench   -netns-file FILE -parallel N [-ifname eth0] [-id-prefix bench]
`

// client bundles what every subcommand needs.
type client struct {
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	global := flag.NewFlagSet("libcni-client", flag.ContinueOnError)
	global.SetOutput(stderr)
	global.Usage = func() { fmt.Fprint(stderr, usageText) }
	cniPath := global.String("cni-path", "", "colon-separated list of directories holding CNI plugin binaries")
	conflist := global.String("conflist", "", "path to the network configuration list (.conflist)")
	cacheDir := global.String("cache-dir", "", "libcni result cache directory (instead of /var/lib/cni)")
	if err := global.Parse(args); err != nil {
		return exitUsage
	}

	rest := global.Args()
	if len(rest) == 0 {
		return usageError(stderr, "missing command")
	}
	cmd, cmdArgs := rest[0], rest[1:]

	if *cniPath == "" || *conflist == "" {
		return usageError(stderr, "-cni-path and -conflist are required")
	}
	// The cache dir is required for everything that touches the cache, so
	// tests never fall back to the machine-wide /var/lib/cni.
	if cmd != "version" && *cacheDir == "" {
		return usageError(stderr, "-cache-dir is required")
	}

	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		return reportError(stdout, stderr, err)
	}
	c := &client{
		cni:  libcni.NewCNIConfigWithCacheDir(strings.Split(*cniPath, ":"), *cacheDir, nil),
		list: list,
	}

	switch cmd {
	case "add", "check", "del":
		return c.single(cmd, cmdArgs, stdout, stderr)
	case "version":
		return c.version(cmdArgs, stdout, stderr)
	case "bench":
		return c.bench(cmdArgs, stdout, stderr)
	default:
		return usageError(stderr, fmt.Sprintf("unknown command %q", cmd))
	}
}

// runtimeConf builds the per-attachment parameters the way runtimes do.
// IgnoreUnknown keeps plugins from rejecting CNI_ARGS they don't know.
func runtimeConf(id, netns, ifname string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      ifname,
		Args:        [][2]string{{"IgnoreUnknown", "1"}},
	}
}

// single implements add, check and del for one attachment.
func (c *client) single(cmd string, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet(cmd, stderr)
	netns := fs.String("netns", "", "path of the pod's network namespace")
	id := fs.String("id", "", "container ID")
	ifname := fs.String("ifname", "eth0", "interface name inside the pod")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if *netns == "" || *id == "" {
		return usageError(stderr, cmd+": -netns and -id are required")
	}

	rt := runtimeConf(*id, *netns, *ifname)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()

	switch cmd {
	case "add":
		res, err := c.cni.AddNetworkList(ctx, c.list, rt)
		if err != nil {
			return reportError(stdout, stderr, err)
		}
		// Plugins answer in the version they were asked for, but convert
		// anyway so the output is guaranteed to be in the conflist's version.
		res, err = res.GetAsVersion(c.list.CNIVersion)
		if err != nil {
			return reportError(stdout, stderr, err)
		}
		if err := res.PrintTo(stdout); err != nil {
			return reportError(stdout, stderr, err)
		}
		fmt.Fprintln(stdout)
	case "check":
		// libcni reads prevResult from the cache written by ADD.
		if err := c.cni.CheckNetworkList(ctx, c.list, rt); err != nil {
			return reportError(stdout, stderr, err)
		}
	case "del":
		if err := c.cni.DelNetworkList(ctx, c.list, rt); err != nil {
			return reportError(stdout, stderr, err)
		}
	}
	return exitOK
}

// pluginVersions is one element of the version command's output.
type pluginVersions struct {
	Type              string   `json:"type"`
	SupportedVersions []string `json:"supportedVersions"`
}

// version asks every plugin of the list which spec versions it supports.
func (c *client) version(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", stderr)
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}

	out := make([]pluginVersions, 0, len(c.list.Plugins))
	for _, p := range c.list.Plugins {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		info, err := c.cni.GetVersionInfo(ctx, p.Network.Type)
		cancel()
		if err != nil {
			return reportError(stdout, stderr, err)
		}
		out = append(out, pluginVersions{Type: p.Network.Type, SupportedVersions: info.SupportedVersions()})
	}
	return writeJSON(stdout, stderr, out)
}

// benchReport is the bench command's output. Durations are milliseconds.
type benchReport struct {
	AddMs     []float64 `json:"add_ms"`
	DelMs     []float64 `json:"del_ms"`
	AddWallMs float64   `json:"add_wall_ms"`
	DelWallMs float64   `json:"del_wall_ms"`
	Errors    []string  `json:"errors"`
}

// bench ADDs one attachment per netns, then DELs them all, with bounded
// concurrency, timing each libcni call.
func (c *client) bench(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("bench", stderr)
	netnsFile := fs.String("netns-file", "", "file with one network namespace path per line")
	parallel := fs.Int("parallel", 1, "maximum number of operations in flight")
	ifname := fs.String("ifname", "eth0", "interface name inside each pod")
	prefix := fs.String("id-prefix", "bench", "container IDs are <prefix>-<index>")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if *netnsFile == "" {
		return usageError(stderr, "bench: -netns-file is required")
	}
	if *parallel < 1 {
		return usageError(stderr, "bench: -parallel must be at least 1")
	}
	netnses, err := readLines(*netnsFile)
	if err != nil {
		return usageError(stderr, "bench: "+err.Error())
	}

	rts := make([]*libcni.RuntimeConf, len(netnses))
	for i, ns := range netnses {
		rts[i] = runtimeConf(fmt.Sprintf("%s-%d", *prefix, i), ns, *ifname)
	}

	add := func(ctx context.Context, rt *libcni.RuntimeConf) error {
		_, err := c.cni.AddNetworkList(ctx, c.list, rt)
		return err
	}
	del := func(ctx context.Context, rt *libcni.RuntimeConf) error {
		return c.cni.DelNetworkList(ctx, c.list, rt)
	}

	rep := benchReport{Errors: []string{}}
	var addErrs, delErrs []string
	rep.AddMs, rep.AddWallMs, addErrs = runPhase("add", rts, *parallel, add)
	// DEL every attachment, including those whose ADD failed: runtimes do
	// the same to clean up partial state, and DEL must tolerate it.
	rep.DelMs, rep.DelWallMs, delErrs = runPhase("del", rts, *parallel, del)
	rep.Errors = append(append(rep.Errors, addErrs...), delErrs...)

	if code := writeJSON(stdout, stderr, rep); code != exitOK {
		return code
	}
	if len(rep.Errors) > 0 {
		return exitFail
	}
	return exitOK
}

// runPhase runs op for every runtime conf with at most parallel calls in
// flight. It returns the durations of the successful calls (in input
// order), the wall time of the whole phase and one message per failure.
func runPhase(name string, rts []*libcni.RuntimeConf, parallel int,
	op func(context.Context, *libcni.RuntimeConf) error) ([]float64, float64, []string) {
	durs := make([]float64, len(rts))
	errs := make([]error, len(rts))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup

	start := time.Now()
	for i, rt := range rts {
		// Acquiring before spawning makes parallel=1 strictly sequential.
		sem <- struct{}{}
		wg.Add(1)
		go func(i int, rt *libcni.RuntimeConf) {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			t := time.Now()
			errs[i] = op(ctx, rt)
			durs[i] = millis(time.Since(t))
		}(i, rt)
	}
	wg.Wait()
	wall := millis(time.Since(start))

	ok := make([]float64, 0, len(rts))
	msgs := []string{}
	for i, err := range errs {
		if err != nil {
			msgs = append(msgs, fmt.Sprintf("%s %s (netns %s): %v", name, rts[i].ContainerID, rts[i].NetNS, err))
			continue
		}
		ok = append(ok, durs[i])
	}
	return ok, wall, msgs
}

func millis(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond)
}

// readLines returns the non-empty, trimmed lines of a file.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("%s lists no network namespace", path)
	}
	return lines, nil
}

// errorReport mirrors the CNI error object so the harness can assert on
// the code a plugin returned.
type errorReport struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details"`
}

// reportError prints err as a CNI error object on stdout and the full
// message on stderr. libcni wraps plugin errors with context ("plugin
// type=... failed (add): ..."), so errors.As is needed to recover the
// plugin's own *types.Error; anything else is reported as code 999.
func reportError(stdout, stderr io.Writer, err error) int {
	rep := errorReport{Code: types.ErrInternal, Msg: err.Error()}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		rep = errorReport{Code: cniErr.Code, Msg: cniErr.Msg, Details: cniErr.Details}
	}
	fmt.Fprintln(stderr, "libcni-client:", err)
	writeJSON(stdout, stderr, rep)
	return exitFail
}

func writeJSON(stdout, stderr io.Writer, v interface{}) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(stderr, "libcni-client: writing output:", err)
		return exitFail
	}
	return exitOK
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses a subcommand's flags and rejects stray positional
// arguments, which usually mean a flag was misspelled or misplaced.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	if err := fs.Parse(args); err != nil {
		return exitUsage, false
	}
	if fs.NArg() > 0 {
		return usageError(stderr, fmt.Sprintf("%s: unexpected arguments %q", fs.Name(), fs.Args())), false
	}
	return exitOK, true
}

func usageError(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "libcni-client: %s\n\n%s", msg, usageText)
	return exitUsage
}
