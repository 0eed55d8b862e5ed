package debugui

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

var (
	ids   = []string{"aaaaaaaa00000001", "bbbbbbbb00000002", "cccccccc00000003"}
	addrs = []string{"127.0.0.1:5701", "127.0.0.1:5702", "127.0.0.1:5703"}
	// migrating partitions in the synthetic view
	movingIDs = []int{17, 42}
)

// testView is 3 members, 271 partitions owned round-robin with 1 backup
// each (on the next member), 2 migrations and one member whose stats failed.
func testView() *View {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	v := &View{
		Cluster: "dev", Self: ids[1], Master: ids[0], TableVersion: 42,
		PartitionCount: 271, BackupCount: 1, ClusterSafe: false, Time: t0.Add(192 * time.Second),
	}
	for i := range ids {
		started := t0.Add(time.Duration(i) * time.Second)
		v.Members = append(v.Members, Member{
			ID: ids[i], Address: addrs[i], Started: started, AgeSeconds: v.Time.Sub(started).Seconds(),
			Master: i == 0, Self: i == 1, Ready: true, Operations: uint64(1000 * (i + 1)),
		})
	}
	v.Members[2].Error = "stats: deadline exceeded"
	for p := 0; p < v.PartitionCount; p++ {
		o, b := p%3, (p+1)%3
		v.Partitions = append(v.Partitions, Partition{ID: p, Owner: ids[o], Backups: []string{ids[b]}})
		v.Members[o].Owned++
		v.Members[b].Backups++
	}
	v.Migrations = []Migration{
		{Partition: movingIDs[0], Source: ids[movingIDs[0]%3], Destination: ids[0], ReportedBy: ids[movingIDs[0]%3], Endpoint: "source"},
		{Partition: movingIDs[1], Source: ids[movingIDs[1]%3], Destination: ids[1], ReportedBy: ids[1], Endpoint: "destination"},
	}
	return v
}

func render(t *testing.T, v *View) (string, *html.Node) {
	t.Helper()
	var buf bytes.Buffer
	if err := Render(&buf, v); err != nil {
		t.Fatalf("Render: %v", err)
	}
	doc, err := html.Parse(strings.NewReader(buf.String()))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return buf.String(), doc
}

func attr(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

func hasClass(n *html.Node, c string) bool {
	v, _ := attr(n, "class")
	return slices.Contains(strings.Fields(v), c)
}

// findAll returns the elements under n, in document order, that match.
func findAll(n *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	for d := range n.Descendants() {
		if d.Type == html.ElementNode && match(d) {
			out = append(out, d)
		}
	}
	return out
}

func byID(t *testing.T, doc *html.Node, id string) *html.Node {
	t.Helper()
	ns := findAll(doc, func(n *html.Node) bool { v, _ := attr(n, "id"); return v == id })
	if len(ns) != 1 {
		t.Fatalf("%d elements with id %q, want 1", len(ns), id)
	}
	return ns[0]
}

func text(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return strings.TrimSpace(b.String())
}

func bodyRows(table *html.Node) []*html.Node {
	return findAll(table, func(n *html.Node) bool { return n.Data == "tr" && n.Parent.Data == "tbody" })
}

var bgRE = regexp.MustCompile(`background-color:\s*(#[0-9a-fA-F]{6})`)

func TestPartitionMap(t *testing.T) {
	v := testView()
	_, doc := render(t, v)
	cells := findAll(doc, func(n *html.Node) bool { return hasClass(n, "cell") })
	if len(cells) != 271 {
		t.Fatalf("%d cells, want 271", len(cells))
	}
	ownerColor := map[string]string{}
	for i, c := range cells {
		if got, _ := attr(c, "data-partition"); got != fmt.Sprint(i) {
			t.Fatalf("cell %d: data-partition %q", i, got)
		}
		p := v.Partitions[i]
		if got, _ := attr(c, "data-owner"); got != p.Owner {
			t.Errorf("cell %d: data-owner %q, want %q", i, got, p.Owner)
		}
		title, _ := attr(c, "title")
		owner, backup := addrs[i%3], addrs[(i+1)%3]
		want := fmt.Sprintf("partition %d — owner %s (id %s); backups: %s", i, owner, ids[i%3][:8], backup)
		if !strings.HasPrefix(title, want) {
			t.Errorf("cell %d: title %q, want prefix %q", i, title, want)
		}
		if got, want := hasClass(c, "migrating"), slices.Contains(movingIDs, i); got != want {
			t.Errorf("cell %d: migrating=%v, want %v", i, got, want)
		}
		style, _ := attr(c, "style")
		m := bgRE.FindStringSubmatch(style)
		if m == nil {
			t.Fatalf("cell %d: no background colour in style %q", i, style)
		}
		if prev, ok := ownerColor[p.Owner]; ok && prev != m[1] {
			t.Errorf("cell %d: owner %s has colours %s and %s", i, p.Owner, prev, m[1])
		}
		ownerColor[p.Owner] = m[1]
	}
	seen := map[string]string{}
	for owner, c := range ownerColor {
		if other, dup := seen[c]; dup {
			t.Errorf("owners %s and %s share colour %s", owner, other, c)
		}
		seen[c] = owner
	}
	for i, id := range ids {
		if ownerColor[id] != MemberColor(i) {
			t.Errorf("member %d colour %s, want MemberColor %s", i, ownerColor[id], MemberColor(i))
		}
	}
}

func TestUnassignedAndUnknownOwners(t *testing.T) {
	v := testView()
	v.Partitions[3].Owner, v.Partitions[3].Backups = "", []string{""}
	v.Partitions[4].Owner = "gone0000deadbeef"
	v.Partitions = v.Partitions[:200] // the rest not in the table yet
	_, doc := render(t, v)
	cells := findAll(doc, func(n *html.Node) bool { return hasClass(n, "cell") })
	if len(cells) != 271 {
		t.Fatalf("%d cells, want 271 (PartitionCount)", len(cells))
	}
	for _, i := range []int{3, 250} {
		title, _ := attr(cells[i], "title")
		if !hasClass(cells[i], "unassigned") || title != fmt.Sprintf("partition %d — unassigned; no backups", i) {
			t.Errorf("cell %d: class unassigned=%v, title %q", i, hasClass(cells[i], "unassigned"), title)
		}
		if _, ok := attr(cells[i], "style"); ok {
			t.Errorf("cell %d: unassigned cell has an owner colour", i)
		}
	}
	if title, _ := attr(cells[4], "title"); !strings.Contains(title, "owner gone0000deadbeef") {
		t.Errorf("cell 4: title %q does not name the unknown owner's id", title)
	}
}

func TestMembersTable(t *testing.T) {
	v := testView()
	_, doc := render(t, v)
	rows := bodyRows(byID(t, doc, "members"))
	if len(rows) != 3 {
		t.Fatalf("%d member rows, want 3", len(rows))
	}
	for i, r := range rows {
		s := text(r)
		for _, want := range []string{addrs[i], ids[i][:8], fmt.Sprint(v.Members[i].Owned), fmt.Sprint(v.Members[i].Operations)} {
			if !strings.Contains(s, want) {
				t.Errorf("member row %d %q lacks %q", i, s, want)
			}
		}
		sw := findAll(r, func(n *html.Node) bool { return hasClass(n, "swatch") })
		if len(sw) != 1 {
			t.Fatalf("member row %d: %d swatches", i, len(sw))
		}
		if style, _ := attr(sw[0], "style"); !strings.Contains(style, MemberColor(i)) {
			t.Errorf("member row %d: swatch style %q, want colour %s", i, style, MemberColor(i))
		}
	}
	if s := text(rows[0]); !strings.Contains(s, "master") || !strings.Contains(s, "3m12s") {
		t.Errorf("master row %q lacks the master marker or its age 3m12s", s)
	}
	if s := text(rows[2]); !strings.Contains(s, "stats: deadline exceeded") {
		t.Errorf("row %q lacks the member's error", s)
	}
	if s := text(byID(t, doc, "self")); s != "127.0.0.1:5702 (id bbbbbbbb)" {
		t.Errorf("answered by %q", s)
	}
	if n := byID(t, doc, "safe"); text(n) != "no" || !hasClass(n, "bad") {
		t.Errorf("cluster safe shows %q", text(n))
	}
	if s := text(byID(t, doc, "time")); s != "2025-03-01 12:03:12 UTC" {
		t.Errorf("time %q", s)
	}
}

// The answering member's merge state is in the header, each member's in
// its row; idle shows as such, and no member row says anything then.
func TestMergeState(t *testing.T) {
	v := testView()
	_, doc := render(t, v)
	if n := byID(t, doc, "merge"); text(n) != "idle" || !hasClass(n, "ok") {
		t.Errorf("merge of an idle member shows %q", text(n))
	}
	for i, r := range bodyRows(byID(t, doc, "members")) {
		if strings.Contains(text(r), "joining") {
			t.Errorf("member row %d of an idle cluster %q mentions a merge", i, text(r))
		}
	}
	v.Merge = Merge{State: "joining", Target: addrs[0], Seconds: 75, Attempts: 3, LastError: "join 127.0.0.1:5701: unreachable", Batches: 12}
	v.Members[1].Ready, v.Members[1].Reason, v.Members[1].Merge = false, "merging into a larger cluster of this name", "joining"
	_, doc = render(t, v)
	want := "joining 127.0.0.1:5701 (for 1m15s; 3 join attempts; 12 merge batches held; last error: join 127.0.0.1:5701: unreachable)"
	if n := byID(t, doc, "merge"); text(n) != want || !hasClass(n, "bad") {
		t.Errorf("merge shows %q, want %q", text(n), want)
	}
	if got := MergeText(v.Merge); got != want {
		t.Errorf("MergeText = %q, want %q", got, want)
	}
	row := text(bodyRows(byID(t, doc, "members"))[1])
	if !strings.Contains(row, "no: merging into a larger cluster of this name") || !strings.Contains(row, "joining") {
		t.Errorf("the merging member's row %q lacks its reason or its merge state", row)
	}
}

func TestMigrationsTable(t *testing.T) {
	v := testView()
	_, doc := render(t, v)
	if _, hidden := attr(byID(t, doc, "no-migrations"), "hidden"); !hidden {
		t.Error(`"none" shown while migrations are in flight`)
	}
	rows := bodyRows(byID(t, doc, "migrations"))
	if len(rows) != 2 {
		t.Fatalf("%d migration rows, want 2", len(rows))
	}
	for i, r := range rows {
		m := v.Migrations[i]
		tds := findAll(r, func(n *html.Node) bool { return n.Data == "td" })
		var got []string
		for _, td := range tds {
			got = append(got, text(td))
		}
		want := []string{fmt.Sprint(m.Partition), addrs[m.Partition%3], addrs[slices.Index(ids, m.Destination)],
			addrs[slices.Index(ids, m.ReportedBy)], m.Endpoint}
		if !slices.Equal(got, want) {
			t.Errorf("migration row %d = %q, want %q", i, got, want)
		}
	}
}

func TestSelfContained(t *testing.T) {
	out, doc := render(t, testView())
	low := strings.ToLower(out)
	for _, bad := range []string{"<script src", "<link", "url(http", "url(", "@import", "http://", "https://"} {
		if strings.Contains(low, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	scripts := findAll(doc, func(n *html.Node) bool { return n.Data == "script" })
	for _, s := range scripts {
		if src, ok := attr(s, "src"); ok {
			t.Errorf("script with src %q", src)
		}
	}
	if len(scripts) != 2 {
		t.Errorf("%d scripts, want 2 (data and code)", len(scripts))
	}
}

// TestScriptData checks the JSON handed to the page's script: the palette
// it colours with and the first operations sample.
func TestScriptData(t *testing.T) {
	_, doc := render(t, testView())
	var d scriptData
	if err := json.Unmarshal([]byte(text(byID(t, doc, "debugui-data"))), &d); err != nil {
		t.Fatalf("script data: %v", err)
	}
	if !slices.Equal(d.Palette, palette) || d.Ops[ids[2]] != 3000 || len(d.Ops) != 3 {
		t.Errorf("script data = %+v", d)
	}
}

func TestEscaping(t *testing.T) {
	v := testView()
	v.Cluster = `</script><script>alert(1)</script>`
	v.Members[0].Address = `"><img src=x onerror=alert(1)>`
	v.Members[1].Error = `<b>boom</b>`
	_, doc := render(t, v)
	if n := len(findAll(doc, func(n *html.Node) bool { return n.Data == "script" })); n != 2 {
		t.Errorf("%d scripts after hostile input, want 2", n)
	}
	if n := len(findAll(doc, func(n *html.Node) bool { return n.Data == "img" || n.Data == "b" && text(n) == "boom" })); n != 0 {
		t.Errorf("hostile input produced %d elements", n)
	}
	if !strings.Contains(text(byID(t, doc, "cluster")), "</script>") {
		t.Errorf("cluster name not shown as text")
	}
}

func TestEmptyView(t *testing.T) {
	for name, v := range map[string]*View{"zero": {}, "nil": nil, "members only": {Members: testView().Members}} {
		t.Run(name, func(t *testing.T) {
			out, doc := render(t, v)
			if !strings.HasPrefix(out, "<!DOCTYPE html>") || !strings.HasSuffix(strings.TrimSpace(out), "</html>") {
				t.Errorf("not a complete page")
			}
			if n := len(findAll(doc, func(n *html.Node) bool { return hasClass(n, "cell") })); n != 0 {
				t.Errorf("%d cells, want 0", n)
			}
			if _, hidden := attr(byID(t, doc, "no-migrations"), "hidden"); hidden {
				t.Error(`"none" hidden without migrations`)
			}
			if _, hidden := attr(byID(t, doc, "migrations"), "hidden"); !hidden {
				t.Error("migrations table shown without migrations")
			}
			if s := text(byID(t, doc, "time")); s != "–" {
				t.Errorf("zero time shown as %q", s)
			}
		})
	}
}

// TestJSONContract pins the JSON names of the View types: the same data is
// served at /debug/cluster?format=json and read by the page's script.
func TestJSONContract(t *testing.T) {
	v := testView()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		View       map[string]json.RawMessage
		Members    []map[string]json.RawMessage `json:"members"`
		Partitions []map[string]json.RawMessage `json:"partitions"`
		Migrations []map[string]json.RawMessage `json:"migrations"`
	}
	if err := json.Unmarshal(b, &got.View); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	check := func(what string, m map[string]json.RawMessage, want ...string) {
		t.Helper()
		var keys []string
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		sort.Strings(want)
		if !slices.Equal(keys, want) {
			t.Errorf("%s JSON keys = %q, want %q", what, keys, want)
		}
	}
	check("View", got.View, "cluster", "self", "master", "tableVersion", "partitionCount", "backupCount",
		"clusterSafe", "merge", "time", "members", "partitions", "migrations")
	var merge map[string]json.RawMessage
	if err := json.Unmarshal(got.View["merge"], &merge); err != nil {
		t.Fatal(err)
	}
	check("Merge, idle", merge, "state")
	v.Merge = Merge{State: "joining", Target: addrs[0], Seconds: 3, Attempts: 2, LastError: "unreachable", Batches: 5, Replays: 1}
	mb, err := json.Marshal(v.Merge)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(mb, &merge); err != nil {
		t.Fatal(err)
	}
	check("Merge, joining", merge, "state", "target", "seconds", "attempts", "lastError", "batches", "replays")
	memberKeys := []string{"id", "address", "started", "ageSeconds", "master", "self", "ready", "operations", "owned", "backups"}
	check("Member", got.Members[0], memberKeys...)
	check("Member with error", got.Members[2], append(memberKeys, "error")...)
	v.Members[1].Merge = "joining"
	mj, err := json.Marshal(v.Members[1])
	if err != nil {
		t.Fatal(err)
	}
	var merging map[string]json.RawMessage
	if err := json.Unmarshal(mj, &merging); err != nil {
		t.Fatal(err)
	}
	check("Member merging", merging, append(memberKeys, "merge")...)
	check("Partition", got.Partitions[0], "id", "owner", "backups")
	check("Migration", got.Migrations[0], "partition", "source", "destination", "reportedBy", "endpoint")

	var back View
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Members[2].Error != v.Members[2].Error || back.Migrations[1] != v.Migrations[1] || !back.Time.Equal(v.Time) {
		t.Errorf("round trip lost data")
	}
}

func TestFormatAge(t *testing.T) {
	for sec, want := range map[float64]string{0: "0s", 42.9: "42s", 192: "3m12s", 3605: "1h00m", 90061: "1d01h", -1: "–"} {
		if got := formatAge(sec); got != want {
			t.Errorf("formatAge(%v) = %q, want %q", sec, got, want)
		}
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("closed") }

func TestRenderWriteError(t *testing.T) {
	if err := Render(failWriter{}, testView()); err == nil {
		t.Error("Render hid the writer's error")
	}
}
