//go:build race

package main

// raceEnabled says the test binary runs with the race detector, so the
// member binary under test is built with it too.
const raceEnabled = true
