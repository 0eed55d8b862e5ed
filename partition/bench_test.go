package partition

import (
	"strconv"
	"testing"
)

func BenchmarkPartitionID(b *testing.B) {
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "bench-" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	s := 0
	for i := 0; i < b.N; i++ {
		s += ID(keys[i&1023], DefaultCount)
	}
	_ = s
}
