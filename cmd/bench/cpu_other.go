//go:build !unix

package main

import "time"

// cpuTime is not measured without getrusage: the report shows 0.
func cpuTime() time.Duration { return 0 }
