from ckpt_index.cli import main

main()
