package gateway

import (
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard limit: each relayed TCP flow holds
// two descriptors, and the usual soft limit of 1024 would cap a gateway at ~500 flows. It returns
// the limit in force (0 if unknown).
func raiseFileLimit(log *logrus.Logger) uint64 {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		log.WithError(err).Warn("read RLIMIT_NOFILE")
		return 0
	}
	if r.Cur < r.Max {
		old := r.Cur
		r.Cur = r.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
			log.WithError(err).WithField("soft", old).Warn("raise RLIMIT_NOFILE")
			return old
		}
	}
	log.WithField("nofile", r.Cur).Info("open file limit")
	return r.Cur
}
