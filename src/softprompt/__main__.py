"""``python -m softprompt``: the command line as the ``softprompt`` script starts it. Launchers start modules, not
scripts: ``accelerate launch -m softprompt ...`` and ``torchrun -m softprompt ...`` run this in every process."""

from softprompt.launch import main

if __name__ == "__main__":
    main()
