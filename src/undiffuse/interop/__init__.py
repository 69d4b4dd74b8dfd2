"""Models in and out the way the field passes them around: diffusers folders.

    diffusers.py  the mapping, as plain data: a run's U-Net, class embedding and schedule <-> a
                  UNet2DModel config and state dict and a DDPMScheduler config (no diffusers import)
    folders.py    export_run (run folder -> diffusers folder) and import_folder (the reverse), each
                  checked by the eps of both networks on the same inputs
"""
