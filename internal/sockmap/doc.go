// Package sockmap relays the bytes of a TCP flow between its two sockets inside the kernel: an eBPF
// sk_skb verdict program on a sockmap redirects what one socket receives to the other socket's send
// queue, so an established flow costs no goroutine, no buffer and no copy through userspace.
//
// It owns the program and maps (one set per process, see Open), the per-flow state machine that turns
// FIN, reset and half-close into the right shutdowns once the redirected bytes have drained, and the
// flow control that sockmap lacks: when a destination falls behind, the program stops redirecting and
// the flow's excess is copied by userspace while TCP flow control pushes back on the sender.
//
// It is Linux-only; elsewhere Open reports ErrUnsupported.
package sockmap
