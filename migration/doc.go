// Package migration will hold what moves partition data between members:
// migration planning on the master, migration execution, promotion of
// backups when a member dies, and replica sync.
//
// It is empty in this release: when the master publishes a new partition
// table, a partition that changes owner starts empty on its new owner, so
// data in it is lost. The migration issue fills this package; until then,
// add all members before loading data.
package migration
