from dyncli.cli.app import main

main()
