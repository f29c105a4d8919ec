package gateway

import (
	"encoding/json"
	"maps"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/state"
	"github.com/socksgate/socksgate/upstream"
)

// selectionsFile is the state file of the select groups' choices: {"group": "member"}.
const selectionsFile = "selected.json"

// selections are the members chosen in select groups, by group name. They outlive a reload
// (each new routing applies them) and a restart (the state directory); a missing, damaged or
// unwritable file costs the choices, never the start. The directory is opened and the file
// read only once a config has a select group: a config without one touches neither.
type selections struct {
	log  *logrus.Logger
	path string // the state directory

	mu     sync.Mutex
	loaded bool
	dir    *state.Dir // nil: the state directory is unusable; choices last until a restart
	chosen map[string]string
}

func newSelections(dir string, log *logrus.Logger) *selections {
	return &selections{log: log, path: dir, chosen: map[string]string{}}
}

// loadSelections is newSelections with the file read at once.
func loadSelections(dir string, log *logrus.Logger) *selections {
	s := newSelections(dir, log)
	s.mu.Lock()
	s.load()
	s.mu.Unlock()
	return s
}

// load opens the directory and reads the file, once; s.mu is held.
func (s *selections) load() {
	if s.loaded {
		return
	}
	s.loaded = true
	d, err := state.Open(s.path)
	if err != nil {
		s.log.WithError(err).WithField("state_dir", s.path).Warn("state directory unusable: select groups' choices will not survive a restart")
		return
	}
	s.dir = d
	b, err := d.ReadFile(selectionsFile)
	switch {
	case state.IsMissing(err):
	case err != nil:
		s.log.WithError(err).Warn("select groups' saved choices lost: each group starts with its first member")
	default:
		chosen := map[string]string{}
		if err := json.Unmarshal(b, &chosen); err != nil {
			s.log.WithError(err).Warn("select groups' saved choices unreadable: each group starts with its first member")
			return
		}
		for g, m := range chosen {
			if _, set := s.chosen[g]; !set { // a choice made before the file was read wins
				s.chosen[g] = m
			}
		}
	}
}

// apply gives each select group of cfg its saved choice; a choice that is no longer one of the
// group's members is dropped (the group starts with its first).
func (s *selections) apply(cfg *configs.Config, ups map[string]upstream.Upstream) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, gc := range cfg.Groups {
		grp, ok := ups[gc.Name].(*upstream.Group)
		if !ok || gc.Policy != configs.PolicySelect {
			continue
		}
		s.load()
		member, chosen := s.chosen[gc.Name]
		if !chosen {
			continue
		}
		if err := grp.Select(member); err != nil {
			s.log.WithError(err).WithField("group", gc.Name).Warn("select: the saved choice is not a member any more; the first member serves")
		}
	}
}

// set records a choice and writes the file.
func (s *selections) set(group, member string) error {
	s.mu.Lock()
	s.load()
	s.chosen[group] = member
	snapshot := maps.Clone(s.chosen)
	dir := s.dir
	s.mu.Unlock()
	if dir == nil {
		return nil
	}
	b, err := json.Marshal(snapshot)
	if err != nil {
		return err
	}
	return dir.WriteFile(selectionsFile, b)
}
