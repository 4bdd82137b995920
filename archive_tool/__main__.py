from archive_tool.cli.app import main

main()
