"""The errors a user can cause and fix; the CLI prints them as one line, without a traceback."""

from captioning.batch_caption import BatchCaptionError
from captioning.coco_rehearsal import RehearsalError
from captioning.config import ConfigError
from captioning.datasets import DatasetError
from captioning.encoders import EncoderWeightsError
from captioning.feature_shards import ShardError
from captioning.features import FeatureCacheError
from captioning.files import CacheWriteError
from captioning.images import ImageLoadError
from captioning.model_file import ModelFileError
from captioning.results_page import ResultsPageError
from captioning.runs import RunError

USER_ERRORS = (BatchCaptionError, CacheWriteError, ConfigError, DatasetError, EncoderWeightsError, FeatureCacheError,
               ImageLoadError, ModelFileError, RehearsalError, ResultsPageError, RunError, ShardError)
