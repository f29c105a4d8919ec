// Package udploop relays datagrams the way a C relay does: UDP sockets that Go's poller never
// sees, read by one goroutine that waits in epoll_wait(2) for all of them and handles each
// readable socket where it woke.
//
// Why not Go's poller: it registers every socket for EPOLLIN|EPOLLOUT, edge-triggered, and a
// UDP socket's send completes (veth: at once, in the sender's own call) with a write-space
// wake-up of whoever waits on that epoll set: one thread woken for nothing per datagram sent,
// besides the thread that a goroutine made runnable by the poller wakes and sysmon's naps as
// the processors go idle and busy. Measured on the transparent UDP path (strace -c over 3,000
// sequential round trips): 4.5 context switches and 2.2 nanosleeps per round trip, against
// redsocks' 2.2 and none. Here a socket is registered for EPOLLIN alone, on the loop's own epoll
// set, and the loop's goroutine is in a plain blocking system call while it waits.
//
// A Conn is a socket taken from a *net.UDPConn (Detach: the descriptor is duplicated and the
// net.UDPConn closed, which takes it off Go's poller). Its reads and writes are nonblocking
// system calls on its descriptor, guarded by a reference count so that Close never frees a
// descriptor number a read or a write is still using. Where the system has no epoll (not
// Linux) Supported is false and callers keep their goroutines.
package udploop
