package operation

import (
	"bufio"
	"bytes"
	"context"
	"testing"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
)

// BenchmarkFrameEncode measures encoding one request frame into a
// connection's output buffer (what sendRequest does under its lock).
func BenchmarkFrameEncode(b *testing.B) {
	op := &echoOp{S: "bench-1234"}
	buf := make([]byte, 0, 64<<10)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if len(buf) > 60<<10 {
			buf = buf[:0]
		}
		var start int
		buf, start = transport.BeginFrame(buf, transport.KindRequest, uint64(i))
		w := spi.Writer{}
		w.SetBuffer(buf)
		w.WriteUint32(42)
		w.WriteUint16(1)
		w.WriteVarint(17)
		w.WriteUint64(7)
		w.WriteUvarint(uint64(i))
		w.WriteBool(false)
		op.WriteData(&w)
		buf = w.Bytes()
		if err := transport.EndFrame(buf, start); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFrameDecode measures reading one request frame from a buffered
// stream and decoding its header and operation.
func BenchmarkFrameDecode(b *testing.B) {
	frame := requestFrame(1, 42, 1, 17, "bench-1234")
	stream := bytes.Repeat(frame, 1024)
	rd := bytes.NewReader(stream)
	br := bufio.NewReaderSize(rd, 64<<10)
	var body []byte
	op := new(echoOp)
	r := new(spi.Reader)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for i := 0; i < b.N; i++ {
		if i%1024 == 0 {
			rd.Reset(stream)
			br.Reset(rd)
		}
		var err error
		if body, err = transport.ReadFrame(br, body); err != nil {
			b.Fatal(err)
		}
		_, payload, err := transport.ParseHeader(body)
		if err != nil {
			b.Fatal(err)
		}
		r.Reset(payload)
		r.ReadUint32()
		r.ReadUint16()
		r.ReadVarint()
		r.ReadUint64()
		r.ReadUvarint()
		r.ReadBool()
		if err := op.ReadData(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecutorHandoff measures queueing a function to a partition
// executor and waiting for it to run.
func BenchmarkExecutorHandoff(b *testing.B) {
	s := newTestService(b)
	done := make(chan struct{}, 1)
	fn := func() { done <- struct{}{} }
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := s.RunOnPartition(i%7, fn); err != nil {
			b.Fatal(err)
		}
		<-done
	}
}

// BenchmarkLocalInvoke measures Invoke when this member owns the
// partition: no encoding, one executor hand-off.
func BenchmarkLocalInvoke(b *testing.B) {
	s := newTestService(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	op := &echoOp{S: "x"}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := s.Invoke(ctx, "echo", op, i%7); err != nil {
			b.Fatal(err)
		}
	}
}
