"""What several test modules share: sidecars in-process and as child processes, scripted
upstreams, config files, a load generator and a recording transport. Test modules import
from here, never from one another."""
