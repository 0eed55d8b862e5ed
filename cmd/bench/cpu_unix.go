//go:build unix

package main

import (
	"syscall"
	"time"
)

// cpuTime returns the user+sys CPU time the process has used (every
// goroutine: callers and members).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
