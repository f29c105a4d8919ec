//go:build linux

package sockmap

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// Layout of one slot's state in the mmap-able state array (one cache line per socket). The program
// writes sent, passed and paused; userspace writes base, relayed and limit. Every field is 8 bytes so
// both sides can use plain atomic loads, stores and adds on it.
const (
	offSent    = 0  // bytes the program redirected from this socket to its peer
	offPassed  = 8  // bytes the program left in this socket's own queue while paused
	offPaused  = 16 // 1 while this direction is relayed by userspace (program sets and clears it)
	offBase    = 24 // written(peer) when the flow was added (see written)
	offRelayed = 32 // bytes userspace read from this socket and wrote into the peer
	offLimit   = 40 // bound on the redirect backlog toward the peer, in bytes; 0: none
	offSignal  = 48 // 1 once the program told userspace that the backlog passed the limit
	offHard    = 56 // the hard bound: beyond it the program stops redirecting by itself
	slotSize   = 64
)

// sk_skb verdicts.
const (
	skDrop = 0
	skPass = 1
)

// tcpSockOffsets are the offsets of the fields of the kernel's struct tcp_sock that the program reads
// to know how far the peer socket has got: bytes_acked + (write_seq - snd_una) is every byte ever
// queued into that socket, by the redirect or by userspace. They come from the running kernel's BTF.
type tcpSockOffsets struct {
	bytesAcked, writeSeq, sndUna int16
}

func kernelTCPSockOffsets() (tcpSockOffsets, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return tcpSockOffsets{}, fmt.Errorf("load kernel BTF: %w", err)
	}
	var st *btf.Struct
	if err := spec.TypeByName("tcp_sock", &st); err != nil {
		return tcpSockOffsets{}, fmt.Errorf("find struct tcp_sock in kernel BTF: %w", err)
	}
	want := map[string]*int16{}
	var o tcpSockOffsets
	want["bytes_acked"] = &o.bytesAcked
	want["write_seq"] = &o.writeSeq
	want["snd_una"] = &o.sndUna
	for _, m := range st.Members {
		if p, ok := want[m.Name]; ok {
			if m.BitfieldSize != 0 || m.Offset%8 != 0 {
				return o, fmt.Errorf("tcp_sock.%s is a bit field", m.Name)
			}
			*p = int16(m.Offset.Bytes())
			delete(want, m.Name)
		}
	}
	if len(want) != 0 {
		return o, fmt.Errorf("struct tcp_sock lacks %v", want)
	}
	return o, nil
}

// verdictProgram returns the sk_skb verdict program, attached to the ingress sockmap. In pseudo-C:
//
//	slot = slots[cookie(skb)];  st = &state[slot]        // not ours: SK_PASS
//	if skb->len == 0: return SK_DROP                     // the empty skb that carries a FIN
//	if st->paused:
//		if st->passed != st->relayed: goto pass          // userspace has not caught up yet
//		st->paused = 0
//	peer = targets[slot^1]                               // takes a reference
//	if !peer: goto pause                                 // peer not in the map yet (Add in progress)
//	if st->limit:
//		tp = skc_to_tcp_sock(peer)
//		written = tp->bytes_acked + (u32)(tp->write_seq - tp->snd_una)
//		backlog = st->sent + st->base + st->relayed - written
//	release(peer)
//	if backlog > st->hard: goto pause                    // hard bound
//	if backlog > st->limit && !st->signal:               // soft bound: ask userspace to throttle
//		st->signal = 1; ringbuf_output(events, &slot)
//	st->sent += len; return sk_redirect_map(skb, targets, slot^1, 0)
//	pause: st->paused = 1
//	pass: st->passed += len; return SK_PASS
//
// The backlog is what the kernel queued for the peer and has not yet pushed into the peer's send
// queue: sockmap has no backpressure of its own, so without a bound a fast sender into a slow sink
// queues without limit. At the soft bound userspace takes the socket out of the ingress map (it stays
// in the target map, so the other direction goes on): its bytes then wait in its own receive queue
// and TCP flow control pushes back on the sender; once the backlog has drained, userspace puts it
// back. The hard bound (2×limit plus the socket's receive buffer: what a put-back socket may hand
// over at once) covers the time userspace takes to react: passed bytes stay charged to this socket's
// receive buffer, so TCP pushes back too, and userspace copies them, in order, once the backlog has
// drained.
func verdictProgram(targets, slots, state, events *ebpf.Map, off tcpSockOffsets) asm.Instructions {
	const (
		fpCookie  = -8
		fpSlot    = -12
		fpPeer    = -16
		fpWritten = -24
	)
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),              // r6 = skb
		asm.LoadMem(asm.R9, asm.R6, 0, asm.Word), // r9 = skb->len
		asm.FnGetSocketCookie.Call(),             // r0 = cookie
		asm.StoreMem(asm.RFP, fpCookie, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, slots.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpCookie),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass_untracked"),
		asm.LoadMem(asm.R8, asm.R0, 0, asm.Word), // r8 = slot
		asm.StoreMem(asm.RFP, fpSlot, asm.R8, asm.Word),
		asm.Xor.Imm(asm.R8, 1),
		asm.StoreMem(asm.RFP, fpPeer, asm.R8, asm.Word),
		asm.LoadMapPtr(asm.R1, state.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpSlot),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass_untracked"),
		asm.Mov.Reg(asm.R7, asm.R0), // r7 = st
		asm.JEq.Imm(asm.R9, 0, "drop"),

		asm.LoadMem(asm.R1, asm.R7, offPaused, asm.DWord),
		asm.JEq.Imm(asm.R1, 0, "lookup_peer"),
		asm.LoadMem(asm.R1, asm.R7, offPassed, asm.DWord),
		asm.LoadMem(asm.R2, asm.R7, offRelayed, asm.DWord),
		asm.JNE.Reg(asm.R1, asm.R2, "pass"),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.R7, offPaused, asm.R1, asm.DWord),

		asm.LoadMapPtr(asm.R1, targets.FD()).WithSymbol("lookup_peer"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpPeer),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pause"),
		asm.Mov.Reg(asm.R8, asm.R0), // r8 = peer socket (referenced)
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, fpWritten, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R7, offLimit, asm.DWord),
		asm.JEq.Imm(asm.R1, 0, "release"),
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.FnSkcToTcpSock.Call(),
		asm.JEq.Imm(asm.R0, 0, "release"),
		asm.LoadMem(asm.R1, asm.R0, off.bytesAcked, asm.DWord),
		asm.LoadMem(asm.R2, asm.R0, off.writeSeq, asm.Word),
		asm.LoadMem(asm.R3, asm.R0, off.sndUna, asm.Word),
		asm.Sub.Reg32(asm.R2, asm.R3), // 32-bit: wraps like the sequence space, zero-extends
		asm.Add.Reg(asm.R1, asm.R2),
		asm.StoreMem(asm.RFP, fpWritten, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R8).WithSymbol("release"),
		asm.FnSkRelease.Call(),
		asm.LoadMem(asm.R1, asm.R7, offLimit, asm.DWord),
		asm.JEq.Imm(asm.R1, 0, "redirect"),
		asm.LoadMem(asm.R2, asm.R7, offSent, asm.DWord),
		asm.LoadMem(asm.R3, asm.R7, offBase, asm.DWord),
		asm.Add.Reg(asm.R2, asm.R3),
		asm.LoadMem(asm.R3, asm.R7, offRelayed, asm.DWord),
		asm.Add.Reg(asm.R2, asm.R3),
		asm.LoadMem(asm.R3, asm.RFP, fpWritten, asm.DWord),
		asm.Sub.Reg(asm.R2, asm.R3), // r2 = backlog
		asm.LoadMem(asm.R3, asm.R7, offHard, asm.DWord),
		asm.JSGT.Reg(asm.R2, asm.R3, "pause"),
		asm.JSGT.Reg(asm.R2, asm.R1, "signal"),

		asm.Mov.Reg(asm.R1, asm.R9).WithSymbol("redirect"),
		asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, offSent),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, targets.FD()),
		asm.LoadMem(asm.R3, asm.RFP, fpPeer, asm.Word),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkRedirectMap.Call(),
		asm.Return(),

		asm.LoadMem(asm.R1, asm.R7, offSignal, asm.DWord).WithSymbol("signal"),
		asm.JNE.Imm(asm.R1, 0, "redirect"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreMem(asm.R7, offSignal, asm.R1, asm.DWord),
		asm.LoadMapPtr(asm.R1, events.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpSlot),
		asm.Mov.Imm(asm.R3, 4),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),
		asm.Ja.Label("redirect"),

		asm.Mov.Imm(asm.R1, 1).WithSymbol("pause"),
		asm.StoreMem(asm.R7, offPaused, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R9).WithSymbol("pass"),
		asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, offPassed),
		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass_untracked"),
		asm.Return(),

		asm.Mov.Imm(asm.R0, skDrop).WithSymbol("drop"),
		asm.Return(),
	}
}
