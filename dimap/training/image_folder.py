"""ImageFolder for real dataset copies: a file that fails to decode (truncated, not an image at all) must not end a
30-epoch run hours in. It is replaced, logged once and counted; only past data.max_bad_images does the run stop,
and then on every rank at the same update: a rank raising alone would leave the others in their next collective
until its timeout (30 minutes wherever no torchrun ends them, as for the Slurm tasks of Hydra's submitit launcher).

So the dataset itself never stops the run: past the limit it goes on serving (blank) replacements and says so
through `sentence_past_limit`; the loops that consume it (dimap.training.engine, finetune) share that through a
collective they make anyway and call `stop_every_rank` together."""
import multiprocessing
import socket

from PIL import Image
from torchvision.datasets import ImageFolder

from dimap.errors import UserError
from dimap.training.distributed import all_gather_object, get_rank, get_world_size


class TooManyBadImages(UserError):
    """More unreadable images than data.max_bad_images (raised by every rank together, see stop_every_rank). Raised
    in a DataLoader worker (a folder none of whose images can be read), it is re-raised in the main process with
    the worker's traceback as its message (torch's ExceptionWrapper); keep only our sentence."""

    def __init__(self, message: str):
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class TolerantImageFolder(ImageFolder):
    """ImageFolder that replaces a file it cannot decode (truncated, not an image) by the next readable one, so
    batches keep their size and ranks their step counts. Each bad file is logged once and counted once per
    process group rank (the count is shared by its loader workers, through shared memory the main process reads).

    Past `max_bad` a bad file is replaced by a blank image instead, without looking further: the run stops at the
    next agreement of the ranks (within an update, before any checkpoint), and a folder that has become unreadable
    as a whole (a lost mount) must not be scanned file by file meanwhile, each rank stuck in its loader."""

    def __init__(self, root, transform, max_bad: int):
        super().__init__(root, transform=transform)
        self.max_bad = int(max_bad)
        self.bad = multiprocessing.Array("q", self.max_bad + 1)  # indices of the bad files seen, then their count
        self.n_bad = multiprocessing.Value("i", 0, lock=False)

    def __getitem__(self, index):
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            path, target = self.samples[i]
            try:
                sample = self.loader(path)
            except Exception as e:  # any failure to decode the file; transform errors are not caught
                if not self._bad_file(i, path, e):
                    continue
                sample, target = Image.new("RGB", (8, 8)), self.samples[index][1]  # past the limit: see the class
            if self.transform is not None:
                sample = self.transform(sample)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return sample, target
        raise TooManyBadImages(f"no image under {self.root} can be read: check the dataset copy")

    def _bad_file(self, i, path, error) -> bool:
        """Count and log bad file `i` (once); True when this process group rank is past the limit."""
        with self.bad.get_lock():
            n = self.n_bad.value
            if n > self.max_bad:  # past the limit: the stop is under way, the count stays the one it names
                return True
            if i in self.bad[:n]:
                return False
            self.bad[n] = i
            self.n_bad.value = n = n + 1
        print(f"warning: skipping unreadable image {path} ({type(error).__name__}: {error}); {n} so far "
              f"(data.max_bad_images={self.max_bad})", flush=True)
        return n > self.max_bad

    def sentence_past_limit(self, where: str = "") -> str | None:
        """The sentence the run stops with when more than `max_bad` files failed (in this process or its loader
        workers), else None; `where` (e.g. ' on host H (rank R)') follows the folder's name."""
        n = self.n_bad.value
        if n <= self.max_bad:
            return None
        return (f"{n} images under {self.root}{where} could not be read, more than data.max_bad_images="
                f"{self.max_bad} (the last: {self.samples[self.bad[n - 1]][0]}): repair or remove them, or raise "
                "data.max_bad_images and rerun to resume")


def past_limit(loader) -> str | None:
    """This rank's stop sentence when the dataset of `loader` (a DataLoader or a dataset) is a TolerantImageFolder
    past its limit, else None (also for any other dataset). Reads shared memory only: cheap at every update."""
    dataset = getattr(loader, "dataset", loader)
    dataset = getattr(dataset, "dataset", dataset)  # inside dimap.training.item_seeds.PerImageSeeds
    if not isinstance(dataset, TolerantImageFolder) or dataset.n_bad.value <= dataset.max_bad:
        return None
    where = f" on {socket.gethostname()} (rank {get_rank()})" if get_world_size() > 1 else ""
    return dataset.sentence_past_limit(where)


def stop_every_rank(sentence: str | None):
    """Raise TooManyBadImages on every rank with the sentence of the first rank past its limit (`sentence`: this
    rank's, or None). A collective: call it on all ranks at the same point, once they have agreed through one that
    some rank is past its limit."""
    raise TooManyBadImages(next(s for s in all_gather_object(sentence) if s))
