from immortal_hub.cli import main

main()
