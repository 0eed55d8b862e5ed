// Package partition hashes keys to partitions and holds the versioned
// partition table: which member owns each partition.
//
// A key's partition is xxhash64(key) % count; the hash is stable across
// processes and platforms, so every member agrees on it. The table is
// computed by the master (the oldest member) alone and published with a
// version; members keep the newest version they have seen.
//
// The package is values and pure functions: it starts no goroutines and
// takes no locks. A Table is immutable once published, so any goroutine
// may read a shared one (the node engine keeps the current one behind an
// atomic pointer, read by the operation service's routing on every
// invocation); a change is made on a Clone. Rebalance and RebalanceBackups
// compute owners and backups for the master's migration manager (package
// migration); Encode and Decode carry a table in the master's pushes.
package partition

import (
	"github.com/cespare/xxhash/v2"
)

// DefaultCount is the default number of partitions.
const DefaultCount = 271

// ID returns the partition of key among count partitions.
func ID(key string, count int) int {
	return int(xxhash.Sum64String(key) % uint64(count))
}

// IDBytes returns the partition of key among count partitions.
func IDBytes(key []byte, count int) int {
	return int(xxhash.Sum64(key) % uint64(count))
}
