package nodeengine

import (
	"fmt"

	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// engineService is the name of the node engine's own service: its
// operations publish the partition table and keep proxies in step. They run
// on the generic executors.
const engineService = "partita.engine"

const (
	opPublishTable  uint16 = 1
	opProxy         uint16 = 2
	opListProxies   uint16 = 3
	opMigPrepare    uint16 = 4
	opMigApply      uint16 = 5
	opMigFinish     uint16 = 6
	opLeave         uint16 = 7
	opReplicaSync   uint16 = 8
	opReplicaCheck  uint16 = 9
	opReplicaStatus uint16 = 10
	opMemberStats   uint16 = 11
	opResolve       uint16 = 12
	opCaughtUp      uint16 = 13
	opMerge         uint16 = 14
)

func engineOperationTypes() []spi.OperationType {
	return []spi.OperationType{
		{ID: opPublishTable, New: func() spi.Operation { return new(publishTableOp) }},
		{ID: opProxy, New: func() spi.Operation { return new(proxyOp) }},
		{ID: opListProxies, New: func() spi.Operation { return new(listProxiesOp) }},
		{ID: opMigPrepare, New: func() spi.Operation { return new(migPrepareOp) }},
		{ID: opMigApply, New: func() spi.Operation { return new(migApplyOp) }},
		{ID: opMigFinish, New: func() spi.Operation { return new(migFinishOp) }},
		{ID: opLeave, New: func() spi.Operation { return new(leaveOp) }},
		{ID: opReplicaSync, New: func() spi.Operation { return new(replicaSyncOp) }},
		{ID: opReplicaCheck, New: func() spi.Operation { return new(replicaCheckOp) }},
		{ID: opReplicaStatus, New: func() spi.Operation { return new(replicaStatusOp) }},
		{ID: opMemberStats, New: func() spi.Operation { return new(memberStatsOp) }},
		{ID: opResolve, New: func() spi.Operation { return new(resolveOp) }},
		{ID: opCaughtUp, New: func() spi.Operation { return new(caughtUpOp) }},
		{ID: opMerge, New: func() spi.Operation { return new(mergeOp) }},
	}
}

// publishTableOp carries a partition table from the master. Its response
// is the receiver's table version after applying it.
type publishTableOp struct {
	table *partition.Table
	newer []byte // the receiver's table, when newer than the one pushed
}

func (op *publishTableOp) MessageKind() string { return "table.publish" }
func (op *publishTableOp) Run(ctx *spi.OpContext) error {
	var err error
	op.newer, err = ctx.Service.(*Node).acceptTable(op.table, ctx.Caller)
	return err
}
func (op *publishTableOp) Response() any { return op.newer }
func (op *publishTableOp) WriteData(w *spi.Writer) {
	w.WriteUvarint(uint64(len(op.table.Owners)))
	op.table.Encode(w)
}
func (op *publishTableOp) ReadData(r *spi.Reader) error {
	count := r.ReadUvarint()
	if err := r.Err(); err != nil {
		return err
	}
	if count > 1<<16 {
		return fmt.Errorf("%w: table of %d partitions", spi.ErrProtocol, count)
	}
	t, err := partition.Decode(r, int(count))
	op.table = t
	return err
}

// proxyOp creates or destroys a distributed object on the receiver.
type proxyOp struct {
	destroy bool
	service string
	name    string
}

func (op *proxyOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	if op.destroy {
		return n.proxies.destroyLocal(op.service, op.name)
	}
	_, _, err := n.proxies.createLocal(op.service, op.name)
	return err
}
func (op *proxyOp) WriteData(w *spi.Writer) {
	w.WriteBool(op.destroy)
	w.WriteString(op.service)
	w.WriteString(op.name)
}
func (op *proxyOp) ReadData(r *spi.Reader) error {
	op.destroy, op.service, op.name = r.ReadBool(), r.ReadString(), r.ReadString()
	return r.Err()
}

// listProxiesOp returns every (service, name) the receiver knows, encoded
// as pairs of strings, so a new member can create the same objects.
type listProxiesOp struct{ list []byte }

func (op *listProxiesOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	w := spi.NewWriter(nil)
	for _, o := range n.proxies.all() {
		w.WriteString(o[0])
		w.WriteString(o[1])
	}
	op.list = w.Bytes()
	return nil
}
func (op *listProxiesOp) Response() any              { return op.list }
func (op *listProxiesOp) WriteData(w *spi.Writer)    {}
func (op *listProxiesOp) ReadData(*spi.Reader) error { return nil }
