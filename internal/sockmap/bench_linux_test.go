//go:build linux

package sockmap

import (
	"io"
	"os"
	"testing"
)

// BenchmarkRelay moves b.N bytes client→server through a kernel-relayed flow and through a plain
// io.Copy relay (two goroutines), on loopback. Compare the MB/s of the two sub-benchmarks.
func BenchmarkRelay(b *testing.B) {
	const chunk = 256 << 10
	run := func(b *testing.B, tp *topology) {
		buf := make([]byte, chunk)
		b.SetBytes(chunk)
		b.ResetTimer()
		got := make(chan int64, 1)
		go func() { n, _ := io.Copy(io.Discard, tp.server); got <- n }()
		for range b.N {
			if _, err := tp.client.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		tp.client.CloseWrite()
		if n := <-got; n != int64(b.N)*chunk {
			b.Fatalf("server got %d bytes, want %d", n, int64(b.N)*chunk)
		}
	}
	b.Run("kernel", func(b *testing.B) {
		rl := relayForTest(b)
		if os.Getenv("SOCKMAP_UNBOUNDED") != "" { // no flow control: isolates the redirect itself
			old := rl.limit
			rl.limit = 0
			defer func() { rl.limit = old }()
		}
		r := newRunner(b)
		tp := newTopology(b)
		addFlow(b, rl, r, tp)
		run(b, tp)
	})
	b.Run("io.Copy", func(b *testing.B) {
		tp := newTopology(b)
		go func() { io.Copy(tp.b, tp.a); tp.b.CloseWrite() }()
		go func() { io.Copy(tp.a, tp.b); tp.a.CloseWrite() }()
		run(b, tp)
	})
}
