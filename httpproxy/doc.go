// Package httpproxy speaks HTTP proxying in both roles socksgate needs. As a server it is the
// explicit HTTP proxy port: CONNECT tunnels and absolute-URI forwarding, with optional Basic
// authentication, handing each request to the gateway as a Flow. As a client, Dialer reaches
// destinations through an upstream HTTP proxy with CONNECT, chaining through the dial function
// of the hop below like every other upstream kind.
//
// The package never logs: it returns errors (a proxy's refusal as a *StatusError inside a
// *net.OpError) and leaves logging to the gateway.
package httpproxy
