// Command failover measures how long writes stop when a member dies: the
// time from a kill to writes flowing again, for several cluster sizes and
// both membership presets, after one death and after a second.
//
// Usage:
//
//	go run ./cmd/failover [flags]
//
// For each preset ("default": config.Default; "fast":
// UseFastFailureDetection) and each cluster size N it runs -runs times:
// start N members in this process on free ports of 127.0.0.1 over real TCP
// and UDP (nodeengine.StartLocal: multicast off, members 1.. join member
// 0), partitions.backup-count and the counter's backup-count set to
// -sync-backups (1), wait until the cluster is stable and safe, then run
// one caller per partition (271 by default). Caller p increments a counter
// that lives in partition p, in a loop, each time through a member picked
// at random among the live ones, with no deadline of its own (the
// members' invocation timeout, 120 s by default, bounds it). After the
// warm-up (3 s) the youngest member is killed with Terminate (no goodbye:
// memberlist stops without a leave message, connections drop, the others
// find out by failure detection); the second kill, of the next youngest,
// follows -second-after (8 s) after the first, or -settle (2 s) after
// writes flowed again if that is later; with -overlap it follows exactly
// -second-after after the first, noticed or not (two failures that
// overlap, as when a rack loses power). -kill-master kills the oldest
// member (the master) first.
//
// Definition. "Writes flowing" after a kill is the moment every partition
// has completed a successful increment that was invoked after the kill;
// the time reported is from the start of Terminate to the last of those
// completions. (Terminate returns once memberlist's probe in flight has
// ended, up to a probe interval: increments invoked while it runs may
// still reach the dying member's executors, so only those invoked once it
// returned count.) Every partition has its own caller, so this is also
// the longest any caller that started after the kill was stuck. "Declared
// dead" is when the last survivor dropped the member from its member list
// (polled every 5 ms). The rate printed is the successful increments per
// second in the second before the kill.
//
// With one backup, a second death before the backups lost with the first
// have been rebuilt can lose increments: this command measures time, not
// data, and does not check values.
//
// The table printed at the end has, per preset and size, the median over
// the runs of each kill's time to writes flowing (and in brackets the
// median time to declared dead), then every run's time to writes flowing.
// docs/operations.md (section "Failover time") holds the measured table.
//
// The flags are:
//
//	-sizes 3,5,7          cluster sizes
//	-presets default,fast membership presets
//	-runs R               runs per cell (default 3; the table shows the median)
//	-kills K              1 or 2 (default 2)
//	-second-after D       first kill to second kill (default 8s)
//	-settle D             least time from writes flowing to the next kill (default 2s)
//	-limit D              give up on a kill after this long (default 60s)
//	-warmup D             load before the first kill (default 3s)
//	-sync-backups S       synchronous backups (default 1)
//	-overlap              second kill exactly -second-after after the first
//	-kill-master          kill the master first
//	-suspicion-max-timeout-mult M
//	                      membership.suspicion-max-timeout-mult for both
//	                      presets (default 0: each preset's own; 6 gives
//	                      the settings measured before it was tuned)
//	-suspicion-mult K     membership.suspicion-mult for both presets
//	                      (default 0: each preset's own)
//	-dead-on-refused-port=false
//	                      membership.dead-on-refused-port off: memberlist's
//	                      suspicion alone declares the killed members dead
//	-v                    log the members' warnings and errors
//
// It exits 1 if a cluster could not start or a kill's writes did not flow
// again within -limit, 2 on bad flags.
package main
