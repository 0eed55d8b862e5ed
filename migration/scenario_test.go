package migration

import (
	"bufio"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Run `go test ./migration -run 'TestPlanData|TestTableData' -update` to
// rewrite the expected sections of testdata/{plan,table}/*.txt from what
// the code returns now.
var update = flag.Bool("update", false, "rewrite the expected output of testdata/{plan,table}/*.txt")

// scenario is one case of a testdata file: "key: value" input lines and
// # comments, a "----" line, then the expected output. Cases are separated
// by a blank line (blank lines before the "----" are skipped).
type scenario struct {
	line     int      // line of the first input line, for messages
	input    []string // input lines as written, comments included
	keyvals  []keyval // the input lines but comments, in order
	expected []string // expected lines as written
}

type keyval struct {
	line     int
	key, val string // around the first ":", val untrimmed
}

func readScenarios(t *testing.T, path string) []scenario {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []scenario
	var cur *scenario
	inOutput := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), " \t")
		switch {
		case line == "":
			if cur != nil && inOutput {
				cases = append(cases, *cur)
				cur, inOutput = nil, false
			}
			continue
		case cur == nil:
			cur = &scenario{line: n}
		}
		switch {
		case inOutput:
			cur.expected = append(cur.expected, line)
			continue
		case line == "----":
			inOutput = true
			continue
		}
		cur.input = append(cur.input, line)
		if strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("%s:%d: want key: value, got %q", path, n, line)
		}
		cur.keyvals = append(cur.keyvals, keyval{n, key, val})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		if !inOutput {
			t.Fatalf("%s:%d: case without a ---- line", path, cur.line)
		}
		cases = append(cases, *cur)
	}
	return cases
}

// testScenarios runs each testdata/<dir>/*.txt file as a subtest: parse
// turns every case of the file into a C, then run computes each one's
// output, which must equal the case's expected lines (else "file:line:
// differs" and both) or, with -update, replaces them in the file.
func testScenarios[C any](t *testing.T, dir, differs string,
	parse func(t *testing.T, path string, s scenario) C,
	run func(t *testing.T, path string, s scenario, c C) []string) {
	files, err := filepath.Glob(filepath.Join("testdata", dir, "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no testdata/%s/*.txt files", dir)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			scs := readScenarios(t, path)
			cases := make([]C, len(scs))
			for i, s := range scs {
				cases[i] = parse(t, path, s)
			}
			var rewritten []string
			for i, s := range scs {
				got := run(t, path, s, cases[i])
				if *update {
					if len(rewritten) > 0 {
						rewritten = append(rewritten, "")
					}
					rewritten = append(append(append(rewritten, s.input...), "----"), got...)
				} else if !slices.Equal(got, s.expected) {
					t.Errorf("%s:%d: %s\n--- want\n%s\n--- got\n%s",
						path, s.line, differs, strings.Join(s.expected, "\n"), strings.Join(got, "\n"))
				}
			}
			if *update {
				if err := os.WriteFile(path, []byte(strings.Join(rewritten, "\n")+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
