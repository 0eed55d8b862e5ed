package main

import (
	"io"
	"strings"
	"testing"
)

func TestFlagsRejected(t *testing.T) {
	for _, args := range [][]string{
		{"-sizes", "1"},
		{"-sizes", "x"},
		{"-sizes", "2", "-kills", "2"},
		{"-presets", "slow"},
		{"-runs", "0"},
		{"-kills", "3"},
		{"-warmup", "500ms"},
		{"-sync-backups", "7"},
		{"-suspicion-max-timeout-mult", "-1"},
		{"-suspicion-mult", "-1"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted", args)
		}
	}
}

// TestSmoke runs one fast-preset cluster of 3 through two kills.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and waits for two deaths")
	}
	var out strings.Builder
	if st := run([]string{"-sizes", "3", "-presets", "fast", "-runs", "1", "-warmup", "1s", "-second-after", "3s", "-limit", "30s"}, &out, io.Discard); st != exitOK {
		t.Fatalf("exit status %d:\n%s", st, out.String())
	}
	if !strings.Contains(out.String(), "| fast | 3 |") {
		t.Fatalf("no table row:\n%s", out.String())
	}
	t.Log(out.String())
}
