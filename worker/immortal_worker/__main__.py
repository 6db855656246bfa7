from immortal_worker.cli import main

main()
