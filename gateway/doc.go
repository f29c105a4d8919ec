// Package gateway is the engine: Run wires the listeners, the kernel rules and shutdown
// together; the inbounds (captured TCP and UDP, the explicit HTTP and SOCKS ports) hand it a
// connection and a route.Flow; it routes each flow, dials the decision's upstream, relays the
// bytes and keeps the flow record (limits, the live table, one log line and one metrics update
// at the end). Reload swaps each section of the running config in place.
package gateway
