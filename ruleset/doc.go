// Package ruleset owns rule sets: lists of domains or address prefixes kept in files (plain
// lists with v2fly's and Clash's prefixes, hosts files, dnsmasq server=/ipset= lines, Clash
// rule providers), parsed into compact read-only sets whose lookups allocate nothing, and a
// Registry that reloads a set when its file changes and swaps the new version in whole. A
// file that cannot be read or parsed keeps the version in force. It never logs: loads are
// reported as Events and Stats.
package ruleset
