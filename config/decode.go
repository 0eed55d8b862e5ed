package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/partita-go/partita/spi"
)

// decodeErrors decodes data over c, recording key lines in c.lines, and
// returns every problem found. Keys absent from data keep c's values.
func decodeErrors(c *Config, source string, data []byte) []error {
	d := &decoder{source: source, lines: c.lines}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file keeps every default
		}
		return []error{d.syntax(err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return []error{d.syntax(err)}
		}
		return []error{&Error{Source: source, Line: extra.Line, Msg: "a second YAML document; the file must hold one"}}
	}
	if len(doc.Content) == 1 {
		d.config(doc.Content[0], c)
	}
	return d.errs
}

// field decodes the value node v found at key path into its destination.
type field func(v *yaml.Node, path string)

// decoder walks the node tree against the schema, collecting every error
// rather than stopping at the first.
type decoder struct {
	source string
	lines  map[string]int
	errs   []error
}

func (d *decoder) errorf(line int, key, format string, args ...any) {
	d.errs = append(d.errs, &Error{Source: d.source, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// syntax turns a yaml.v3 error ("yaml: line 3: did not find expected key")
// into an *Error with the line in its field.
func (d *decoder) syntax(err error) error {
	e := &Error{Source: d.source, Msg: err.Error()}
	if rest, ok := strings.CutPrefix(e.Msg, "yaml: line "); ok {
		num, msg, ok := strings.Cut(rest, ": ")
		if line, err := strconv.Atoi(num); ok && err == nil {
			e.Line, e.Msg = line, "yaml: "+msg
		}
	}
	return e
}

func (d *decoder) config(n *yaml.Node, c *Config) {
	d.mapping(n, "", map[string]field{
		"cluster": d.section(map[string]field{
			"name": scalar(d, &c.Cluster.Name),
		}),
		"network": d.section(map[string]field{
			"bind":                    scalar(d, &c.Network.Bind),
			"port-auto-increment":     scalar(d, &c.Network.PortAutoIncrement),
			"port-count":              scalar(d, &c.Network.PortCount),
			"max-pending-connections": scalar(d, &c.Network.MaxPendingConnections),
			"max-pending-per-address": scalar(d, &c.Network.MaxPendingPerAddress),
			"join": d.section(map[string]field{
				"members": d.addrList(&c.Network.Join.Members),
				"multicast": d.section(map[string]field{
					"enabled": scalar(d, &c.Network.Join.Multicast.Enabled),
					"group":   scalar(d, &c.Network.Join.Multicast.Group),
				}),
			}),
		}),
		"partitions": d.section(map[string]field{
			"count":                 scalar(d, &c.Partitions.Count),
			"backup-count":          scalar(d, &c.Partitions.BackupCount),
			"anti-entropy-interval": scalar(d, &c.Partitions.AntiEntropyInterval),
		}),
		"operations": d.section(map[string]field{
			"partition-threads":  scalar(d, &c.Operations.PartitionThreads),
			"queue-size":         scalar(d, &c.Operations.QueueSize),
			"invocation-timeout": scalar(d, &c.Operations.InvocationTimeout),
			"retry-pause":        scalar(d, &c.Operations.RetryPause),
			"dedup-window":       scalar(d, &c.Operations.DedupWindow),
			"backup-ack-timeout": scalar(d, &c.Operations.BackupAckTimeout),
			"frame-body-timeout": scalar(d, &c.Operations.FrameBodyTimeout),
		}),
		"membership": d.section(map[string]field{
			"probe-interval":             scalar(d, &c.Membership.ProbeInterval),
			"probe-timeout":              scalar(d, &c.Membership.ProbeTimeout),
			"suspicion-mult":             scalar(d, &c.Membership.SuspicionMult),
			"suspicion-max-timeout-mult": scalar(d, &c.Membership.SuspicionMaxTimeoutMult),
			"dead-on-refused-port":       scalar(d, &c.Membership.DeadOnRefusedPort),
			"gossip-interval":            scalar(d, &c.Membership.GossipInterval),
			"push-pull-interval":         scalar(d, &c.Membership.PushPullInterval),
		}),
		"split-brain": d.section(map[string]field{
			"first-probe-delay": scalar(d, &c.SplitBrain.FirstProbeDelay),
			"probe-interval":    scalar(d, &c.SplitBrain.ProbeInterval),
			"remember-dead":     scalar(d, &c.SplitBrain.RememberDead),
		}),
		"migration": d.section(map[string]field{
			"parallel":         scalar(d, &c.Migration.Parallel),
			"step-timeout":     scalar(d, &c.Migration.StepTimeout),
			"shutdown-timeout": scalar(d, &c.Migration.ShutdownTimeout),
		}),
		"metrics": d.section(map[string]field{
			"address": scalar(d, &c.Metrics.Address),
		}),
		"services": func(v *yaml.Node, path string) { c.Services = d.services(v, path) },
	})
}

// section returns a field that decodes a nested mapping.
func (d *decoder) section(fields map[string]field) field {
	return func(v *yaml.Node, path string) { d.mapping(v, path, fields) }
}

// mapping decodes the mapping n at path, calling the field of each key.
// Unknown and repeated keys are errors; a null n changes nothing.
func (d *decoder) mapping(n *yaml.Node, path string, fields map[string]field) {
	d.pairs(n, path, func(k, v *yaml.Node) {
		f, ok := fields[k.Value]
		if !ok {
			in := path
			if in == "" {
				in = "(top level)"
			}
			d.errorf(k.Line, "", "unknown key %q in %s", k.Value, in)
			return
		}
		p := k.Value
		if path != "" {
			p = path + "." + k.Value
		}
		d.lines[p] = k.Line
		f(resolve(v), p)
	})
}

// pairs calls fn for each key and value of the mapping n, after checking
// that n is a mapping with distinct scalar keys.
func (d *decoder) pairs(n *yaml.Node, path string, fn func(k, v *yaml.Node)) {
	n = resolve(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, path, "want a mapping, got %s", describe(n))
		return
	}
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k.Line, path, "want a plain key, got %s", describe(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errorf(k.Line, path, "key %q repeated (first at line %d)", k.Value, first)
			continue
		}
		seen[k.Value] = k.Line
		fn(k, v)
	}
}

// sequence calls fn for each item of the sequence n with its key path
// ("path[i]"). It reports whether n was a sequence or null.
func (d *decoder) sequence(n *yaml.Node, path string, fn func(item *yaml.Node, path string)) bool {
	if isNull(n) {
		return true
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n.Line, path, "want a list, got %s", describe(n))
		return false
	}
	for i, item := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		item = resolve(item)
		d.lines[p] = item.Line
		fn(item, p)
	}
	return true
}

// addrList returns a field that decodes a list of host:port scalars
// (checked by Validate). Unlike the other fields a null list empties dst.
func (d *decoder) addrList(dst *[]string) field {
	return func(v *yaml.Node, path string) {
		out := []string{}
		if d.sequence(v, path, func(item *yaml.Node, p string) {
			if item.Kind != yaml.ScalarNode || isNull(item) {
				d.errorf(item.Line, p, "want host:port, got %s", describe(item))
				return
			}
			out = append(out, item.Value)
		}) {
			*dst = out
		}
	}
}

// scalar returns a field that decodes a scalar into dst. A null value
// keeps dst; a bad value keeps it too, so Validate does not report the
// key a second time.
func scalar[T string | int | bool | time.Duration](d *decoder, dst *T) field {
	return func(v *yaml.Node, path string) {
		if isNull(v) {
			return
		}
		var val T
		var want string
		ok := v.Kind == yaml.ScalarNode
		switch p := any(&val).(type) {
		case *string:
			want = "a string"
			ok = ok && v.Decode(p) == nil
		case *bool:
			want = "true or false"
			ok = ok && v.Decode(p) == nil
		case *int:
			// The tag check matters: yaml.v3 decodes 2.5 into an int as 2.
			want = "an integer"
			ok = ok && v.ShortTag() == "!!int" && v.Decode(p) == nil
		case *time.Duration:
			want = "a duration such as 500ms or 2m"
			var err error
			*p, err = time.ParseDuration(v.Value)
			ok = ok && err == nil
		}
		if !ok {
			d.errorf(v.Line, path, "want %s, got %s", want, describe(v))
			return
		}
		*dst = val
	}
}

func (d *decoder) services(n *yaml.Node, path string) []ServiceConfig {
	out := []ServiceConfig{}
	d.sequence(n, path, func(item *yaml.Node, p string) {
		s := ServiceConfig{Enabled: true, Where: d.source + ":" + strconv.Itoa(item.Line),
			SplitBrainProtection: SplitBrainProtectionConfig{ProtectOn: ProtectReadWrite}}
		if item.Kind != yaml.MappingNode && !isNull(item) {
			d.errorf(item.Line, p, "want a mapping with name and type, got %s", describe(item))
			return
		}
		d.mapping(item, p, map[string]field{
			"name":    scalar(d, &s.Name),
			"type":    scalar(d, &s.Type),
			"enabled": scalar(d, &s.Enabled),
			"split-brain-protection": d.section(map[string]field{
				"min-size":   scalar(d, &s.SplitBrainProtection.MinSize),
				"protect-on": scalar(d, &s.SplitBrainProtection.ProtectOn),
			}),
			"properties": func(v *yaml.Node, pp string) {
				// serviceName, not s.Name: `name:` may come later.
				s.Properties = spi.NewProperties(serviceName(item), d.properties(v, pp))
			},
			"configuration": func(v *yaml.Node, _ string) {
				if !isNull(v) {
					s.Configuration = v
				}
			},
			"merge-policy": scalar(d, &s.MergePolicy),
		})
		out = append(out, s)
	})
	return out
}

// properties decodes a flat mapping of scalars.
func (d *decoder) properties(n *yaml.Node, path string) map[string]spi.Property {
	m := map[string]spi.Property{}
	d.pairs(n, path, func(k, v *yaml.Node) {
		v = resolve(v)
		p := path + "." + k.Value
		switch {
		case isNull(v):
			m[k.Value] = spi.Property{Where: d.source + ":" + strconv.Itoa(v.Line)}
		case v.Kind == yaml.ScalarNode:
			m[k.Value] = spi.Property{Value: v.Value, Where: d.source + ":" + strconv.Itoa(v.Line)}
		default:
			d.errorf(v.Line, p, "properties must be scalars, got %s; use configuration: for structured settings", describe(v))
		}
	})
	return m
}

// serviceName finds the `name:` of a service entry without decoding it.
func serviceName(item *yaml.Node) string {
	if item.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(item.Content); i += 2 {
		if k, v := resolve(item.Content[i]), resolve(item.Content[i+1]); k.Value == "name" && v.Kind == yaml.ScalarNode {
			return v.Value
		}
	}
	return ""
}

// resolve follows aliases to the anchored node.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what the user wrote, for "want X, got Y" messages.
func describe(n *yaml.Node) string {
	switch {
	case isNull(n):
		return "an empty value"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.ScalarNode:
		return strconv.Quote(n.Value)
	case n.Kind == yaml.AliasNode:
		return "an alias"
	default:
		return "a document"
	}
}
