// Package partition hashes keys to partitions and holds the versioned
// partition table: which member owns each partition.
//
// A key's partition is xxhash64(key) % count; the hash is stable across
// processes and platforms, so every member agrees on it. The table is
// computed by the master (the oldest member) alone and published with a
// version; members keep the newest version they have seen.
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
