package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// A stream is one client of /traffic, /memory, /logs or /connections: a WebSocket when the
// request asks for an upgrade, otherwise a chunked response of JSON lines, as the Clash API
// streams. The handler's goroutine writes; nothing else runs per client but the WebSocket's
// reader, which answers pings and notices the close.
type stream struct {
	ws  *websocket.Conn
	w   http.ResponseWriter
	rc  *http.ResponseController
	ctx context.Context
}

func isUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// openStream starts the stream: it lifts the request's deadlines and upgrades, or sends the
// headers of a chunked response. A failed upgrade has been answered already.
func openStream(w http.ResponseWriter, r *http.Request) (*stream, error) {
	liftDeadlines(w)
	if !isUpgrade(r) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		return &stream{w: w, rc: rc, ctx: r.Context()}, nil
	}
	opts := &websocket.AcceptOptions{}
	if a, ok := r.Context().Value(accessKey{}).(*Access); ok {
		// A page may open a WebSocket to any host (no CORS for WebSockets): only the
		// endpoint's own pages and the configured origins may.
		for _, o := range a.CORSOrigins {
			if o == "*" {
				opts.InsecureSkipVerify = true
			}
			opts.OriginPatterns = append(opts.OriginPatterns, strings.TrimSuffix(o, "/"))
		}
	}
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(4 << 10)
	return &stream{ws: c, ctx: c.CloseRead(context.WithoutCancel(r.Context()))}, nil
}

// done is closed when the client has gone.
func (s *stream) done() <-chan struct{} { return s.ctx.Done() }

// send writes v as one JSON message (a WebSocket text message, or a line).
func (s *stream) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if s.ws != nil {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		defer cancel()
		return s.ws.Write(ctx, websocket.MessageText, b)
	}
	s.rc.SetWriteDeadline(time.Now().Add(10 * time.Second)) // a client that stops reading
	if _, err := s.w.Write(append(b, '\n')); err != nil {
		return err
	}
	return s.rc.Flush()
}

func (s *stream) close() {
	if s.ws != nil {
		s.ws.Close(websocket.StatusNormalClosure, "")
	}
}

// forward sends what ch carries to st (those keep accepts; all with keep nil) until the client
// goes or a send fails.
func forward[T any](st *stream, ch <-chan T, keep func(T) bool) {
	for {
		select {
		case <-st.done():
			return
		case v := <-ch:
			if keep != nil && !keep(v) {
				continue
			}
			if st.send(v) != nil {
				return
			}
		}
	}
}

// hub hands values to its listeners without ever blocking the publisher: a listener whose
// channel is full misses the value. first and last, when set, run (under the hub's lock) as
// the first listener joins and the last leaves. The zero hub is ready.
type hub[T any] struct {
	first, last func()

	mu   sync.Mutex
	subs map[chan T]struct{}
	n    atomic.Int32 // len(subs), read without the lock by listening
}

func (h *hub[T]) listening() bool { return h.n.Load() > 0 }

func (h *hub[T]) publish(v T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- v:
		default:
		}
	}
}

// join adds a listener with room for size values; leave removes it.
func (h *hub[T]) join(size int) (<-chan T, func()) {
	ch := make(chan T, size)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[chan T]struct{}{}
	}
	h.subs[ch] = struct{}{}
	h.n.Store(int32(len(h.subs)))
	if len(h.subs) == 1 && h.first != nil {
		h.first()
	}
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[ch]; !ok {
			return
		}
		delete(h.subs, ch)
		h.n.Store(int32(len(h.subs)))
		if len(h.subs) == 0 && h.last != nil {
			h.last()
		}
	}
}
