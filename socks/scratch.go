package socks

import "sync"

// scratchLen covers the longest message a decoder buffers: a request or reply with a 255-byte
// name (3 + MaxAddrLen), a greeting (2 + 255) and an RFC 1929 field or SOCKS4 string (256).
const scratchLen = 3 + MaxAddrLen

type scratch [scratchLen]byte

// scratchPool holds the decoders' read buffers. Any buffer handed to an io.Reader's Read
// escapes to the heap, so a stack array would cost an allocation per message; a pooled one
// costs none once the pool is warm. Decoders run once or twice per new flow.
var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func putScratch(b *scratch) { scratchPool.Put(b) }
