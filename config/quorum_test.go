package config

import (
	"strings"
	"testing"
)

func TestSplitBrainProtectionParsed(t *testing.T) {
	y := `services:
  - name: a
    type: counter
    split-brain-protection:
      min-size: 3
      protect-on: write
  - name: b
    type: counter
    split-brain-protection:
      min-size: 2
  - name: c
    type: counter
  - name: d
    type: counter
    split-brain-protection:
      protect-on: read
`
	c, err := Parse("sbp.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		cfg           SplitBrainProtectionConfig
		reads, writes int
	}{
		{SplitBrainProtectionConfig{MinSize: 3, ProtectOn: ProtectWrite}, 0, 3},
		{SplitBrainProtectionConfig{MinSize: 2, ProtectOn: ProtectReadWrite}, 2, 2},
		{SplitBrainProtectionConfig{MinSize: 0, ProtectOn: ProtectReadWrite}, 0, 0},
		{SplitBrainProtectionConfig{MinSize: 0, ProtectOn: ProtectRead}, 0, 0},
	} {
		got := c.Services[i].SplitBrainProtection
		if got != want.cfg {
			t.Errorf("services[%d].split-brain-protection = %+v, want %+v", i, got, want.cfg)
		}
		if r, w := got.MinSizes(); r != want.reads || w != want.writes {
			t.Errorf("services[%d]: MinSizes() = %d, %d; want %d, %d", i, r, w, want.reads, want.writes)
		}
	}
	// A config built in code leaves ProtectOn empty: reads and writes.
	if r, w := (SplitBrainProtectionConfig{MinSize: 2}).MinSizes(); r != 2 || w != 2 {
		t.Errorf("empty protect-on: MinSizes() = %d, %d; want 2, 2", r, w)
	}
	if got := Default().Services[0].SplitBrainProtection; got.MinSize != 0 {
		t.Errorf("default protection = %+v, want off", got)
	}
}

func TestSplitBrainProtectionInvalid(t *testing.T) {
	const entry = "services:\n  - name: a\n    type: counter\n    split-brain-protection:\n"
	for _, tc := range []struct {
		name, yaml string
		line       int
		key, msg   string
	}{
		{"negative min-size", entry + "      min-size: -1\n", 5, "services[0].split-brain-protection.min-size", "must not be negative (0: off), got -1"},
		{"min-size not an integer", entry + "      min-size: two\n", 5, "services[0].split-brain-protection.min-size", `want an integer, got "two"`},
		{"bad protect-on", entry + "      min-size: 2\n      protect-on: writes\n", 6, "services[0].split-brain-protection.protect-on", `must be read, write or read-write, got "writes"`},
		{"protect-on not a string", entry + "      protect-on: [read]\n", 5, "services[0].split-brain-protection.protect-on", "want a string, got a list"},
		{"unknown key", entry + "      minimum-size: 2\n", 5, "", `unknown key "minimum-size" in services[0].split-brain-protection`},
		{"not a mapping", "services:\n  - name: a\n    type: counter\n    split-brain-protection: 2\n", 4, "services[0].split-brain-protection", `want a mapping, got "2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tc.yaml))
			e, ok := err.(*Error)
			if !ok {
				t.Fatalf("Parse = %v, want one *Error", err)
			}
			if e.Line != tc.line || e.Key != tc.key || !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("error = %#v\nwant Line %d, Key %q, Msg containing %q", e, tc.line, tc.key, tc.msg)
			}
		})
	}
	// Set in code: Validate names the key, with no line.
	c := Default()
	c.Services[0].SplitBrainProtection = SplitBrainProtectionConfig{MinSize: -2, ProtectOn: "all"}
	err := c.Validate()
	for _, want := range []string{
		DefaultSource + ": services[0].split-brain-protection.min-size: must not be negative",
		DefaultSource + `: services[0].split-brain-protection.protect-on: must be read, write or read-write, got "all"`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to contain %q", err, want)
		}
	}
}
