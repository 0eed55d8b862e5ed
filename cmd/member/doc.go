// Command member runs one Partita member.
//
// Usage:
//
//	member [flags]
//
// With no flags the member runs on the embedded default configuration
// (config.Default): the counter service enabled, bound to 127.0.0.1:5701
// (the next free port when that one is taken), finding the other members
// of cluster "dev" by multicast. When multicast is unusable, or nobody
// answers, the member starts a cluster of its own.
//
// The flags are:
//
//	-config FILE
//	    Read the configuration from FILE (YAML, see package config)
//	    instead of the embedded default. Keys the file leaves out keep
//	    their defaults.
//	-bind host:port
//	    Listen on host:port, overriding network.bind. Port 0 picks any
//	    free port; network.port-auto-increment still applies otherwise.
//	-join host:port,host:port,...
//	    Join the cluster through these members, overriding
//	    network.join.members, and turn multicast discovery off.
//	    -join "" turns multicast off and starts a cluster alone.
//	-log-level debug|info|warn|error
//	    Lowest level of the log lines written to stderr (default info).
//	-log-format text|json
//	    Log line format: slog's key=value text or one JSON object per
//	    line (default text).
//
// Flag values are checked like the configuration file: a bad -bind or
// -join address is reported with the key it overrides.
//
// The member logs with log/slog to stderr. Once it has started it prints
// one line to stdout, which scripts can read to find its address:
//
//	partita member 3f2a9c0e1b7d4a55 listening on 127.0.0.1:5701 (cluster "dev", 1 members)
//
// SIGINT (Ctrl-C) or SIGTERM make the member leave the cluster and shut its
// services down, within 30 seconds; it then exits with status 0. A second
// signal during shutdown stops the process at once.
//
// Exit status: 0 after a clean shutdown, 1 when the member could not start
// or stop cleanly, 2 for bad flags or a bad configuration file. Errors go
// to stderr, prefixed "partita: ".
//
// The binary registers the service types of the packages it imports: the
// counter service. To run your own services, copy this command and import
// the packages that register them (config.RegisterService).
package main
