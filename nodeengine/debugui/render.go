package debugui

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"time"
)

// ContentType is the Content-Type of the page that Render writes.
const ContentType = "text/html; charset=utf-8"

//go:embed cluster.html.tmpl
var pageSrc string

// pageTmpl is parsed once, at package init: a broken template panics here.
var pageTmpl = template.Must(template.New("cluster").Parse(pageSrc))

// palette holds the member colours, picked by index in View.Members
// (oldest first) and cycling; the page's script gets the same list.
var palette = []string{
	"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#edc948",
	"#76b7b2", "#ff9da7", "#9c755f", "#a0cbe8", "#8cd17d", "#d37295",
}

// unknownColor colours partitions owned by an ID missing from the members.
const unknownColor = "#6e6e6e"

// MemberColor returns the CSS colour of the member at index i of
// View.Members: a fixed palette of 12 colours, cycling. The page's script
// uses the same palette, so server-rendered and refreshed colours agree.
func MemberColor(i int) string {
	if i < 0 {
		return unknownColor
	}
	return palette[i%len(palette)]
}

// page is what the template sees.
type page struct {
	V          *View
	Time       string
	SelfLabel  string
	Merge      string // the answering member's merge state in words (MergeText)
	Members    []memberRow
	Cells      []cell
	Migrations []migrationRow
	Data       scriptData
}

type memberRow struct {
	Member
	Color, Short, Age string
}

type cell struct {
	ID                  int
	Owner, Class, Color string
	Title               string
}

type migrationRow struct {
	Migration
	Source, Destination, ReportedBy string
}

// scriptData seeds the page's script: the palette and a first operations
// sample, so the first refresh already shows rates.
type scriptData struct {
	Palette []string          `json:"palette"`
	Unknown string            `json:"unknown"`
	Time    time.Time         `json:"time"`
	Ops     map[string]uint64 `json:"ops"`
}

// Render writes v as a complete, self-contained HTML5 page (inline CSS and
// script, no external assets), readable without JavaScript and refreshing
// itself every 2 seconds from location.pathname + "?format=json" with it.
// Serve it with Content-Type [ContentType]. The page is built in memory
// first, so nothing is written to w when rendering fails. A nil v renders
// an empty view.
func Render(w io.Writer, v *View) error {
	if v == nil {
		v = &View{}
	}
	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, build(v)); err != nil {
		return fmt.Errorf("debugui: render: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}

func build(v *View) *page {
	idx := make(map[string]int, len(v.Members))
	addr := make(map[string]string, len(v.Members))
	p := &page{
		V:     v,
		Time:  formatTime(v.Time),
		Merge: MergeText(v.Merge),
		Data:  scriptData{Palette: palette, Unknown: unknownColor, Time: v.Time, Ops: make(map[string]uint64, len(v.Members))},
	}
	for i, m := range v.Members {
		if _, dup := idx[m.ID]; !dup {
			idx[m.ID] = i
		}
		if m.Address != "" {
			addr[m.ID] = m.Address
		}
		p.Data.Ops[m.ID] = m.Operations
		p.Members = append(p.Members, memberRow{Member: m, Color: MemberColor(i), Short: short(m.ID), Age: formatAge(m.AgeSeconds)})
	}
	label := func(id string) string {
		if a, ok := addr[id]; ok {
			return a
		}
		return id
	}
	p.SelfLabel = label(v.Self)
	if _, ok := addr[v.Self]; ok {
		p.SelfLabel += " (id " + short(v.Self) + ")"
	}

	moving := make(map[int]Migration, len(v.Migrations))
	for _, m := range v.Migrations {
		moving[m.Partition] = m
		p.Migrations = append(p.Migrations, migrationRow{Migration: m,
			Source: label(m.Source), Destination: label(m.Destination), ReportedBy: label(m.ReportedBy)})
	}

	n := v.PartitionCount
	if n <= 0 {
		n = len(v.Partitions)
	}
	p.Cells = make([]cell, n)
	for id := range p.Cells {
		var part Partition
		if id < len(v.Partitions) {
			part = v.Partitions[id]
		}
		c := cell{ID: id, Owner: part.Owner, Class: "cell"}
		var t strings.Builder
		fmt.Fprintf(&t, "partition %d — ", id)
		switch i, ok := idx[part.Owner]; {
		case part.Owner == "":
			c.Class += " unassigned"
			t.WriteString("unassigned")
		case ok:
			c.Color = MemberColor(i)
			t.WriteString("owner " + label(part.Owner))
			if _, ok := addr[part.Owner]; ok {
				t.WriteString(" (id " + short(part.Owner) + ")")
			}
		default:
			c.Class += " unknown"
			c.Color = unknownColor
			t.WriteString("owner " + part.Owner + " (not a member)")
		}
		var backups []string
		for _, b := range part.Backups {
			if b != "" {
				backups = append(backups, label(b))
			}
		}
		if len(backups) == 0 {
			t.WriteString("; no backups")
		} else {
			t.WriteString("; backups: " + strings.Join(backups, ", "))
		}
		if m, ok := moving[id]; ok {
			c.Class += " migrating"
			t.WriteString("; migrating " + label(m.Source) + " → " + label(m.Destination))
		}
		c.Title = t.String()
		p.Cells[id] = c
	}
	return p
}

// MergeText renders a member's merge state in words, as the page shows
// it: "idle", or the state with its target and progress, for example
// "joining 127.0.0.1:5701 (2 join attempts; 3 merge batches held; last
// error: ...)". The page's script renders it the same way.
func MergeText(m Merge) string {
	if m.State == "" || m.State == "idle" {
		return "idle"
	}
	s := m.State
	if m.Target != "" {
		s += " " + m.Target
	}
	var parts []string
	if m.Seconds > 0 {
		parts = append(parts, "for "+formatAge(m.Seconds))
	}
	if m.Attempts > 0 {
		parts = append(parts, fmt.Sprintf("%d join attempts", m.Attempts))
	}
	if m.Batches > 0 {
		parts = append(parts, fmt.Sprintf("%d merge batches held", m.Batches))
	}
	if m.Replays > 0 {
		parts = append(parts, fmt.Sprintf("%d batches sent again", m.Replays))
	}
	if m.LastError != "" {
		parts = append(parts, "last error: "+m.LastError)
	}
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, "; ") + ")"
	}
	return s
}

// short abbreviates a member ID for display.
func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// formatAge renders seconds as "42s", "3m12s", "2h05m" or "3d04h"; the
// page's script formats ages the same way.
func formatAge(sec float64) string {
	if sec < 0 || math.IsNaN(sec) {
		return "–"
	}
	s := int64(sec)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
	}
}

// formatTime renders the view's time in UTC, as the page's script does.
func formatTime(t time.Time) string {
	if t.Year() <= 1 {
		return "–"
	}
	return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
}
