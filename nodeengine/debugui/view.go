// Package debugui renders a member's live HTML view of a Partita cluster,
// the page each member serves at /debug/cluster.
//
// A member fills in a [View] (its member list with per-member stats, the
// partition table and the migrations in flight) and calls [Render] to write
// a self-contained HTML5 page: no external assets, fully readable without
// JavaScript, and with JavaScript refreshing itself every 2 seconds from
// the JSON form of the same View, served at /debug/cluster?format=json.
// The View types are also that JSON schema.
//
// The package only renders: it starts no goroutines and keeps no state.
// The node engine builds the View on the goroutine of the HTTP request
// (asking every member for its stats) and calls Render there; Render may
// run on many goroutines at once.
package debugui

import "time"

// View is a member's picture of the cluster.
type View struct {
	Cluster        string      `json:"cluster"`
	Self           string      `json:"self"`   // member ID that answered
	Master         string      `json:"master"` // member ID of the master ("" if none yet)
	TableVersion   int64       `json:"tableVersion"`
	PartitionCount int         `json:"partitionCount"`
	BackupCount    int         `json:"backupCount"`
	ClusterSafe    bool        `json:"clusterSafe"`
	Merge          Merge       `json:"merge"` // the answering member's part in a split-brain merge
	Time           time.Time   `json:"time"`
	Members        []Member    `json:"members"`    // oldest first
	Partitions     []Partition `json:"partitions"` // index = partition id
	Migrations     []Migration `json:"migrations"` // in flight, as reported by members
}

// Member is one member of the cluster with its stats, as seen by the member
// that answered.
type Member struct {
	ID         string    `json:"id"`
	Address    string    `json:"address"`
	Started    time.Time `json:"started"`
	AgeSeconds float64   `json:"ageSeconds"`
	Master     bool      `json:"master"`
	Self       bool      `json:"self"`
	Ready      bool      `json:"ready"`
	Reason     string    `json:"reason,omitempty"` // why it is not ready (for example "merging into a larger cluster of this name")
	Merge      string    `json:"merge,omitempty"`  // its merge state (see Merge.State) when not idle
	Operations uint64    `json:"operations"`       // operations run on that member since it started (a counter; rates are computed from two samples)
	Owned      int       `json:"owned"`            // primaries it owns in the table
	Backups    int       `json:"backups"`          // backup replicas it holds in the table
	Error      string    `json:"error,omitempty"`  // set when its stats could not be read
}

// Partition is one row of the partition table.
type Partition struct {
	ID      int      `json:"id"`
	Owner   string   `json:"owner"`   // member ID, "" if unassigned
	Backups []string `json:"backups"` // member IDs in replica order; "" for an unset slot
}

// Migration is a partition migration in flight, as reported by one of its
// two endpoints.
type Migration struct {
	Partition   int    `json:"partition"`
	Source      string `json:"source"`      // member ID
	Destination string `json:"destination"` // member ID
	ReportedBy  string `json:"reportedBy"`  // member ID whose state this is
	Endpoint    string `json:"endpoint"`    // "source" or "destination"
}

// Merge is a member's part in a split-brain merge of its cluster into a
// larger one of the same name (docs/architecture.md, "Split brain").
// State is one of:
//
//	idle       no merge
//	merging    MERGING: its cluster prepares to merge (merge data collected,
//	           services Reset, table dropped) and waits for the word to join
//	joining    it joins the larger cluster and waits for its partition
//	           table; a failed attempt is tried again until it succeeds
//	replaying  it has joined and sends its merge data to the new owners
//
// The other fields are set while State is not idle.
type Merge struct {
	State     string  `json:"state"`
	Target    string  `json:"target,omitempty"`    // address of the larger cluster's member it joins through first
	Seconds   float64 `json:"seconds,omitempty"`   // time in this state
	Attempts  int     `json:"attempts,omitempty"`  // join attempts so far
	LastError string  `json:"lastError,omitempty"` // why the last failed join attempt failed
	Batches   int     `json:"batches,omitempty"`   // merge batches (one service's data of one partition) not delivered yet
	Replays   int     `json:"replays,omitempty"`   // batches sent again after their partition refused them
}
