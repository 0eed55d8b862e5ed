package counter_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The guide's code blocks marked with their source file must be that
// file's code, so the guide cannot drift from what runs.
func TestGuideCodeIsRealCode(t *testing.T) {
	guide, err := os.ReadFile("../../docs/guide.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- code: ([^ ]+) -->\n```go\n(.*?)\n```")
	blocks := re.FindAllStringSubmatch(string(guide), -1)
	if len(blocks) < 5 {
		t.Fatalf("found %d marked code blocks in docs/guide.md, want at least 5", len(blocks))
	}
	for _, b := range blocks {
		src, err := os.ReadFile("../../" + b[1])
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(src), b[2]) {
			t.Errorf("docs/guide.md block from %s is not in that file:\n%s", b[1], b[2])
		}
	}
}
