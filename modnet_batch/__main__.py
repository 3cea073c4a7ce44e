from modnet_batch.cli import main

main()
