package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Error is one problem in a configuration. Parse and Validate return every
// problem found, each an *Error, joined with errors.Join; find them with
// errors.As.
type Error struct {
	// Source is the file (Config.Source); empty for a Config built in code.
	Source string
	// Line is the 1-based line in Source; 0 when unknown (a default value,
	// or a field set in code).
	Line int
	// Key is the key path, such as "network.bind" or "services[1].type";
	// empty for problems with the file's structure (unknown or repeated
	// keys, YAML syntax), which Msg describes.
	Key string
	// Msg says what is wrong.
	Msg string
}

// Error formats e as "source:line: key: msg", leaving out the parts that
// are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Source != "" {
		b.WriteString(e.Source)
		if e.Line > 0 {
			b.WriteString(":" + strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		b.WriteString("line " + strconv.Itoa(e.Line) + ": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// joinSorted joins errs in line order; nil for none, the error itself for
// one.
func joinSorted(errs []error) error {
	line := func(err error) int {
		if e, ok := err.(*Error); ok {
			return e.Line
		}
		return 0
	}
	sort.SliceStable(errs, func(i, j int) bool { return line(errs[i]) < line(errs[j]) })
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return errors.Join(errs...)
}

// Validate checks c and returns every problem found, joined with
// errors.Join, each an *Error naming the key (and, for a parsed config,
// the file and line). It may be called again after a program changes
// fields. Service types are checked against the registry, so the packages
// registering them must be imported first.
func (c *Config) Validate() error {
	return joinSorted(c.validate())
}

func (c *Config) validate() []error {
	v := &validator{c: c}

	if c.Cluster.Name == "" {
		v.add("cluster.name", "must not be empty")
	}

	v.addr("network.bind", c.Network.Bind, true, false)
	if c.Network.PortCount <= 0 {
		v.add("network.port-count", "must be positive, got %d", c.Network.PortCount)
	}
	if c.Network.MaxPendingConnections <= 0 {
		v.add("network.max-pending-connections", "must be positive, got %d", c.Network.MaxPendingConnections)
	}
	if c.Network.MaxPendingPerAddress <= 0 {
		v.add("network.max-pending-per-address", "must be positive, got %d", c.Network.MaxPendingPerAddress)
	}
	for i, m := range c.Network.Join.Members {
		v.addr(fmt.Sprintf("network.join.members[%d]", i), m, false, true)
	}
	if mc := c.Network.Join.Multicast; mc.Enabled {
		v.addr("network.join.multicast.group", mc.Group, false, true)
		if host, _, err := net.SplitHostPort(mc.Group); err == nil {
			if ip, err := netip.ParseAddr(host); err != nil || !ip.Is4() || !ip.IsMulticast() {
				v.add("network.join.multicast.group", "bad group %q: want an IPv4 multicast address (224.0.0.0/4) and port", mc.Group)
			}
		}
	}

	if n := c.Partitions.Count; n <= 0 || n > 65535 {
		v.add("partitions.count", "must be 1..65535, got %d", n)
	}
	if n := c.Partitions.BackupCount; n < 0 || n > 6 {
		v.add("partitions.backup-count", "must be 0..6, got %d", n)
	}

	op := c.Operations
	if op.PartitionThreads < 0 {
		v.add("operations.partition-threads", "must not be negative (0: GOMAXPROCS), got %d", op.PartitionThreads)
	}
	if c.Migration.Parallel <= 0 {
		v.add("migration.parallel", "must be positive, got %d", c.Migration.Parallel)
	}
	if op.QueueSize <= 0 {
		v.add("operations.queue-size", "must be positive, got %d", op.QueueSize)
	}
	v.positive("operations.invocation-timeout", op.InvocationTimeout)
	v.positive("operations.retry-pause", op.RetryPause)
	v.positive("operations.dedup-window", op.DedupWindow)
	v.positive("operations.backup-ack-timeout", op.BackupAckTimeout)
	v.positive("operations.frame-body-timeout", op.FrameBodyTimeout)
	if op.RetryPause > 0 && op.InvocationTimeout > 0 && op.RetryPause >= op.InvocationTimeout {
		v.add("operations.retry-pause", "must be shorter than invocation-timeout (%v), got %v", op.InvocationTimeout, op.RetryPause)
	}

	ms := c.Membership
	v.positive("membership.probe-interval", ms.ProbeInterval)
	v.positive("membership.probe-timeout", ms.ProbeTimeout)
	if ms.ProbeTimeout > ms.ProbeInterval && ms.ProbeInterval > 0 {
		v.add("membership.probe-timeout", "must not exceed probe-interval (%v), got %v", ms.ProbeInterval, ms.ProbeTimeout)
	}
	if ms.SuspicionMult < 1 {
		v.add("membership.suspicion-mult", "must be at least 1, got %d", ms.SuspicionMult)
	}
	if ms.SuspicionMaxTimeoutMult < 1 {
		v.add("membership.suspicion-max-timeout-mult", "must be at least 1 (1: a suspicion always lasts the minimum timeout), got %d", ms.SuspicionMaxTimeoutMult)
	}
	v.positive("membership.gossip-interval", ms.GossipInterval)
	v.positive("membership.push-pull-interval", ms.PushPullInterval)
	sb := c.SplitBrain
	v.positive("split-brain.first-probe-delay", sb.FirstProbeDelay)
	v.positive("split-brain.probe-interval", sb.ProbeInterval)
	v.positive("split-brain.remember-dead", sb.RememberDead)
	v.positive("migration.step-timeout", c.Migration.StepTimeout)
	v.positive("partitions.anti-entropy-interval", c.Partitions.AntiEntropyInterval)
	v.positive("migration.shutdown-timeout", c.Migration.ShutdownTimeout)

	if c.Metrics.Address != "" {
		v.addr("metrics.address", c.Metrics.Address, true, false)
	}

	first := map[string]int{} // service name -> index of its first entry
	for i, s := range c.Services {
		p := fmt.Sprintf("services[%d]", i)
		switch j, dup := first[s.Name]; {
		case s.Name == "":
			v.add(p+".name", "missing: every service needs a unique name")
		case dup:
			v.add(p+".name", "duplicate service name %q, first used at %s", s.Name, v.where(fmt.Sprintf("services[%d].name", j)))
		default:
			first[s.Name] = i
		}
		if s.Type == "" {
			v.add(p+".type", "missing: name the registered type that creates the service (registered: %s)", typeList())
		} else if _, ok := ServiceFactory(s.Type); !ok {
			v.add(p+".type", "unknown service type %q (registered: %s); is the package that registers it (config.RegisterService) imported by the member binary?", s.Type, typeList())
		}
		sbp := s.SplitBrainProtection
		if sbp.MinSize < 0 {
			v.add(p+".split-brain-protection.min-size", "must not be negative (0: off), got %d", sbp.MinSize)
		}
		switch sbp.ProtectOn {
		case "", ProtectRead, ProtectWrite, ProtectReadWrite:
		default:
			v.add(p+".split-brain-protection.protect-on", "must be %s, %s or %s, got %q", ProtectRead, ProtectWrite, ProtectReadWrite, sbp.ProtectOn)
		}
		if _, ok := MergePolicyFactory(s.MergePolicy); s.MergePolicy != "" && !ok {
			v.add(p+".merge-policy", "unknown merge policy %q (registered: %s)", s.MergePolicy, strings.Join(MergePolicies(), ", "))
		}
	}
	return v.errs
}

func typeList() string {
	if types := ServiceTypes(); len(types) > 0 {
		return strings.Join(types, ", ")
	}
	return "none"
}

// validator collects errors positioned by the lines recorded at decoding.
type validator struct {
	c    *Config
	errs []error
}

func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, &Error{Source: v.c.Source, Line: v.line(key), Key: key, Msg: fmt.Sprintf(format, args...)})
}

// line returns the line of key, or of the nearest enclosing key that was
// in the file ("services[1]" for a missing "services[1].type"); 0 if none.
func (v *validator) line(key string) int {
	for key != "" {
		if l, ok := v.c.lines[key]; ok {
			return l
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return 0
}

// where returns "source:line" of key, or the key itself when its line is
// unknown.
func (v *validator) where(key string) string {
	if l := v.line(key); l > 0 && v.c.Source != "" {
		return v.c.Source + ":" + strconv.Itoa(l)
	}
	return key
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.add(key, "must be positive, got %v", d)
	}
}

// addr checks that s is host:port. anyPort allows port 0 (any free port);
// needHost rejects an empty host (":5701", all interfaces).
func (v *validator) addr(key, s string, anyPort, needHost bool) {
	if msg := checkAddr(s, anyPort, needHost); msg != "" {
		v.add(key, "bad address %q: %s", s, msg)
	}
}

func checkAddr(s string, anyPort, needHost bool) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "want host:port"
	}
	switch {
	case host == "" && needHost:
		return "missing host"
	case host != "" && !validHost(host):
		return fmt.Sprintf("bad host %q", host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return "port must be a number"
	}
	if err == nil && (n > 0 || anyPort) {
		return ""
	}
	if anyPort {
		return "port must be 1..65535, or 0 for any free port"
	}
	return "port must be 1..65535"
}

// validHost accepts an IP address or a DNS name.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}
