package main
import (
_ "github.com/google/nftables"
_ "github.com/vishvananda/netlink"
_ "golang.org/x/sys/unix"
_ "github.com/sirupsen/logrus"
_ "go.yaml.in/yaml/v3"
)
func main(){}
