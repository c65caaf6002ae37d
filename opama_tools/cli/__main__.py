from opama_tools.cli import main

main()
