import sys

from salt.gpucheck.runner import cli_main

sys.exit(cli_main(sys.argv[1:]))
