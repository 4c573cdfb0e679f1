// Command memberlist-bench runs members of HashiCorp memberlist (DefaultLANConfig) for the
// side-by-side gossip benchmark (bench/gossip_peers.py).
//
// It reads commands as JSON lines on stdin and writes events as JSON lines on stdout, the
// same protocol as bench/peers/member.py speaks for orch and kinship:
//
//	{"cmd":"start","name":"m001","addr":"127.0.90.1","port":7946,"seeds":["127.0.90.2:7946"]}
//	{"cmd":"leave","name":"m001","timeout":2}    graceful leave, then shutdown
//	{"cmd":"stop","name":"m001"}                 shutdown without leaving
//	{"cmd":"exit"}                               shutdown every member and exit
//
//	{"ev":"started","node":"m001","t":1700000000.123}
//	{"ev":"joined","node":"m001","t":...,"contacted":1}     (or "error":...)
//	{"ev":"member","node":"m001","kind":"join|dead|left|update","peer":"m002","t":...}
//
// Times are the wall clock in seconds. It exits when stdin closes.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

type command struct {
	Cmd     string   `json:"cmd"`
	Name    string   `json:"name"`
	Addr    string   `json:"addr"`
	Port    int      `json:"port"`
	Seeds   []string `json:"seeds"`
	Timeout float64  `json:"timeout"`
}

var (
	outMu sync.Mutex
	out   = bufio.NewWriterSize(os.Stdout, 1<<16)
)

func emit(m map[string]interface{}) {
	m["t"] = float64(time.Now().UnixNano()) / 1e9
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	outMu.Lock()
	out.Write(b)
	out.WriteByte('\n')
	out.Flush()
	outMu.Unlock()
}

// events turns memberlist's EventDelegate calls into event lines.
type events struct{ self string }

func (e *events) NotifyJoin(n *memberlist.Node) {
	emit(map[string]interface{}{"ev": "member", "node": e.self, "kind": "join", "peer": n.Name})
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	kind := "dead"
	if n.State == memberlist.StateLeft {
		kind = "left"
	}
	emit(map[string]interface{}{"ev": "member", "node": e.self, "kind": kind, "peer": n.Name})
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	emit(map[string]interface{}{"ev": "member", "node": e.self, "kind": "update", "peer": n.Name})
}

func start(c command, members map[string]*memberlist.Memberlist) {
	cfg := memberlist.DefaultLANConfig()
	cfg.Name = c.Name
	cfg.BindAddr = c.Addr
	cfg.BindPort = c.Port
	cfg.AdvertiseAddr = c.Addr
	cfg.AdvertisePort = c.Port
	cfg.Events = &events{self: c.Name}
	cfg.Logger = log.New(io.Discard, "", 0)
	m, err := memberlist.Create(cfg)
	if err != nil {
		emit(map[string]interface{}{"ev": "error", "node": c.Name, "error": err.Error()})
		return
	}
	members[c.Name] = m
	emit(map[string]interface{}{"ev": "started", "node": c.Name})
	if len(c.Seeds) > 0 {
		go func() {
			n, err := m.Join(c.Seeds)
			ev := map[string]interface{}{"ev": "joined", "node": c.Name, "contacted": n}
			if err != nil {
				ev["error"] = err.Error()
			}
			emit(ev)
		}()
	}
}

func main() {
	// SIGKILL this process when the benchmark dies, even while it is stopped (SIGSTOP).
	syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0)
	if os.Getppid() == 1 {
		os.Exit(1)
	}
	members := map[string]*memberlist.Memberlist{}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	emit(map[string]interface{}{"ev": "ready", "impl": "memberlist", "pid": os.Getpid()})
	for in.Scan() {
		var c command
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			emit(map[string]interface{}{"ev": "error", "error": fmt.Sprintf("bad command: %v", err)})
			continue
		}
		switch c.Cmd {
		case "start":
			start(c, members)
		case "leave", "stop":
			m, ok := members[c.Name]
			if !ok {
				continue
			}
			delete(members, c.Name)
			go func(name string, m *memberlist.Memberlist, leave bool, timeout float64) {
				if leave {
					m.Leave(time.Duration(timeout * float64(time.Second)))
				}
				m.Shutdown()
				emit(map[string]interface{}{"ev": "stopped", "node": name})
			}(c.Name, m, c.Cmd == "leave", c.Timeout)
		case "exit":
			for _, m := range members {
				m.Shutdown()
			}
			emit(map[string]interface{}{"ev": "exit"})
			return
		}
	}
	for _, m := range members {
		m.Shutdown()
	}
}
